"""The chart's egress proxy: the gateway listens for session pods, the operator points them
at it, and the gateway's NetworkPolicy lets sessions in and the proxy out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_helm_schema import NAMESPACE, RELEASE, one, render

from corral.config import OperatorConfig

RUNNER = {"app.kubernetes.io/component": "runner"}


def operator_config(manifests: list[dict[str, Any]]) -> OperatorConfig:
    return OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )


def gateway_args(manifests: list[dict[str, Any]]) -> Any:
    from corral.cli import build_parser

    [container] = one(manifests, "Deployment", gateway=True)["spec"]["template"]["spec"][
        "containers"
    ]
    return container, build_parser(["gateway"]).parse_args(container["args"])


def test_the_gateway_serves_the_egress_proxy_and_sessions_are_pointed_at_it(
    tmp_path: Path,
) -> None:
    manifests = render(tmp_path)
    container, args = gateway_args(manifests)
    assert args.egress_port == 3128
    assert {"name": "egress", "containerPort": 3128, "protocol": "TCP"} in container["ports"]
    # The model API the operator allows is reachable by every session, through the proxy.
    assert args.egress_allow == ["api.anthropic.com:443"]
    service = one(manifests, "Service", gateway=True)
    egress_port = next(p for p in service["spec"]["ports"] if p["name"] == "egress")
    assert egress_port["port"] == 3128 and egress_port["targetPort"] == "egress"
    proxy = operator_config(manifests).egress_proxy
    assert proxy is not None and proxy.port == 3128
    assert proxy.url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:3128"


def test_the_gateway_policy_admits_session_pods_and_lets_the_proxy_out(tmp_path: Path) -> None:
    policy = one(render(tmp_path), "NetworkPolicy", gateway=True)["spec"]
    from_sessions = [r for r in policy["ingress"] if r.get("ports", [{}])[0].get("port") == 3128]
    assert len(from_sessions) == 1
    (peer,) = from_sessions[0]["from"]
    assert peer["namespaceSelector"] == {}
    assert RUNNER.items() <= peer["podSelector"]["matchLabels"].items()
    public = [r for r in policy["egress"] if "ipBlock" in (r.get("to") or [{}])[0]]
    (rule,) = public
    assert "ports" not in rule  # any port: the proxy decides per session
    block = rule["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"]


def test_model_urls_and_pinned_names(tmp_path: Path) -> None:
    values = {
        "config": {"defaultAnthropicBaseUrl": "http://10.245.254.2:8089"},
        "gateway": {
            "egressProxy": {
                "allow": ["*.github.com"],
                "staticHosts": {"allowed.test": ["10.245.254.2"]},
            }
        },
    }
    manifests = render(tmp_path, values)
    container, args = gateway_args(manifests)
    assert args.egress_allow == ["*.github.com", "api.anthropic.com:443", "10.245.254.2:8089"]
    hosts = one(manifests, "ConfigMap", f"{RELEASE}-gateway-egress-hosts")
    assert yaml.safe_load(hosts["data"]["hosts.yaml"]) == {"allowed.test": ["10.245.254.2"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.egress_hosts_file).startswith(mounts["egress-hosts"] + "/")


def test_without_the_egress_proxy_nothing_changes(tmp_path: Path) -> None:
    manifests = render(tmp_path, None, "gateway.egressProxy.enabled=false")
    container, args = gateway_args(manifests)
    assert args.egress_port == 0 and "egress" not in {p["name"] for p in container["ports"]}
    assert operator_config(manifests).egress_proxy is None
    policy = one(manifests, "NetworkPolicy", gateway=True)["spec"]
    assert not [r for r in policy["egress"] if "ipBlock" in (r.get("to") or [{}])[0]]
