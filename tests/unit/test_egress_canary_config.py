"""The chart's egress canary: every session pod is told to try the gateway's traffic port,
which the gateway's own NetworkPolicy admits from anywhere and no session policy allows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_helm_egress import operator_config
from test_helm_schema import NAMESPACE, one, render

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.render import render_network_policy
from corral.render.pod import render_pod

SessionFactory = Callable[..., AgentSession]


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def _allows(rule: dict[str, Any], labels: dict[str, str], port: int) -> bool:
    """Whether an egress rule lets a pod reach pods labelled `labels` (in the release
    namespace) on `port`."""
    ports = [p["port"] for p in rule.get("ports") or []]
    if ports and port not in ports:
        return False
    for peer in rule.get("to") or [{}]:
        if "ipBlock" in peer:
            continue  # pod addresses are private: the operator's carving keeps them out
        namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
        wanted = peer.get("podSelector", {}).get("matchLabels", {})
        if namespace.get("kubernetes.io/metadata.name", NAMESPACE) == NAMESPACE and (
            wanted.items() <= labels.items()
        ):
            return True
    return False


def test_sessions_try_the_gateways_traffic_port_which_their_policy_never_allows(
    tmp_path: Path, make_session: SessionFactory
) -> None:
    manifests = render(tmp_path)
    config = operator_config(manifests)
    service = one(manifests, "Service", gateway=True)
    traffic = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    canary = config.egress_canary
    assert canary is not None
    assert canary.address == f"{service['metadata']['name']}.{NAMESPACE}.svc:{traffic['port']}"
    (container,) = one(manifests, "Deployment", gateway=True)["spec"]["template"]["spec"][
        "containers"
    ]
    pod_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert traffic["targetPort"] == "http"
    # The gateway's own policy admits everyone on that port...
    gateway_policy = one(manifests, "NetworkPolicy", gateway=True)["spec"]
    open_rules = [r for r in gateway_policy["ingress"] if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [pod_port]
    # ...and no session's policy lets it out to that port of the gateway's pods.
    labels = gateway_policy["podSelector"]["matchLabels"]
    session = make_session()
    egress = render_network_policy(session, config)["spec"]["egress"]
    assert not [r for r in egress if _allows(r, labels, pod_port)]
    assert [r for r in egress if _allows(r, labels, 3128)]  # the check can see a rule
    env = env_of(render_pod(session, config, 0))
    assert env[runtime.ENV_EGRESS_CANARY] == canary.address
    assert env[runtime.ENV_EGRESS_CANARY_MAX_WAIT] == "5"
    assert env[runtime.ENV_EGRESS_CANARY_TRY] == "0.15"


def test_the_gate_can_be_turned_off(tmp_path: Path, make_session: SessionFactory) -> None:
    config = operator_config(render(tmp_path, None, "gateway.egressCanary.enabled=false"))
    assert config.egress_canary is None
    env = env_of(render_pod(make_session(), config, 0))
    assert runtime.ENV_EGRESS_CANARY not in env
