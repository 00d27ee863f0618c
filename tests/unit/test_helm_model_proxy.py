"""The chart with the gateway's model proxy on: the key Secret in the gateway only, the
operator's configuration, the ports, policies and RBAC it needs; and the migration guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_helm_schema import CHART, NAMESPACE, is_gateway, one, render, run_helm

from corral.config import OperatorConfig

ON = {"gateway": {"modelProxy": {"enabled": True, "apiKeySecret": {"name": "model-key"},
                                 "namespaceBudgetsUsd": {"team-a": 50}}}}  # fmt: skip


def _config(manifests: list[dict[str, Any]]) -> OperatorConfig:
    return OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )


def test_sessions_are_pointed_at_the_gateways_model_port(tmp_path: Path) -> None:
    manifests = render(tmp_path, ON)
    config = _config(manifests)
    proxy = config.model_proxy
    assert proxy is not None and config.gateway is not None
    service = one(manifests, "Service", gateway=True)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert proxy.url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{ports['model']}"
    assert proxy.port == ports["model"] == 8082
    assert proxy.namespace_budgets_usd == {"team-a": 50}


def test_prices_with_hour_cache_writes_and_a_long_prompt_premium_reach_the_gateway(
    tmp_path: Path,
) -> None:
    row = {"model": "claude-sonnet-4", "input": 3, "output": 15, "cacheRead": 0.3,
           "cacheWrite": 3.75, "cacheWrite1h": 5,
           "longContext": {"aboveInputTokens": 100_000, "outputFactor": 2}}  # fmt: skip
    values = {"gateway": ON["gateway"] | {"modelProxy": ON["gateway"]["modelProxy"] | {
        "prices": [row]}}}  # fmt: skip
    config = _config(render(tmp_path, values))
    assert config.model_proxy is not None
    (price,) = config.model_proxy.prices
    assert price.hour_cache_write == 5 and price.long_context is not None
    assert price.factors(100_001) == (2.0, 2.0) and price.factors(100_000) == (1.0, 1.0)
    # Left null, as a values file may: unset.
    values["gateway"]["modelProxy"]["prices"] = [row | {"cacheWrite1h": None, "longContext": None}]
    (price,) = _config(render(tmp_path, values)).model_proxy.prices  # type: ignore[union-attr]
    assert price.hour_cache_write == 6 and price.long_context is None
    # A misspelt premium fails the install, naming the field.
    values["gateway"]["modelProxy"]["prices"] = [row | {"longContext": {"above": 1}}]
    failed = run_helm("template", "r", str(CHART), values=values, tmp=tmp_path)
    assert failed.returncode != 0 and "above" in failed.stderr


def test_the_real_key_is_mounted_in_the_gateway_and_nowhere_else(tmp_path: Path) -> None:
    manifests = render(tmp_path, ON)
    gateway = one(manifests, "Deployment", gateway=True)["spec"]["template"]["spec"]
    key = next(v for v in gateway["volumes"] if v["name"] == "model-key")
    assert key["secret"]["secretName"] == "model-key"
    (container,) = gateway["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-key")
    config = _config(manifests)
    assert config.model_proxy is not None
    assert config.model_proxy.key_file == f"{mount['mountPath']}/key"
    assert "--config=/etc/corral-operator/config.yaml" in container["args"]
    operator = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert "model-key" not in yaml.safe_dump(operator)
    assert config.runner_env == {}


def test_policies_and_rbac_follow(tmp_path: Path) -> None:
    manifests = render(tmp_path, ON)
    policy = one(manifests, "NetworkPolicy", gateway=True)["spec"]
    model_ingress = [r for r in policy["ingress"] if r["ports"][0]["port"] == 8082]
    assert model_ingress and "podSelector" in model_ingress[0]["from"][0]
    upstream = policy["egress"][-1]
    assert upstream["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert "10.0.0.0/8" in upstream["to"][0]["ipBlock"]["except"]
    role = next(m for m in manifests if m["kind"] == "ClusterRole"
                and m["metadata"]["name"].endswith("-gateway"))  # fmt: skip
    status_rules = [r for r in role["rules"] if "agentsessions/status" in r["resources"]]
    assert status_rules == [
        {"apiGroups": ["corral.dev"], "resources": ["agentsessions/status"], "verbs": ["patch"]}
    ]
    off = render(tmp_path, {})
    role_off = next(m for m in off if m["kind"] == "ClusterRole"
                    and m["metadata"]["name"].endswith("-gateway"))  # fmt: skip
    assert all("agentsessions/status" not in r["resources"] for r in role_off["rules"])
    assert _config(off).model_proxy is None


def test_a_key_left_in_runner_env_fails_the_install_with_the_migration(tmp_path: Path) -> None:
    values = ON | {"config": {"runnerEnv": {"ANTHROPIC_API_KEY": "sk-ant-x"}}}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm("template", "r", str(Path(__file__).parents[2] / "helm" / "corral"),
                      "-f", str(path))  # fmt: skip
    assert result.returncode != 0
    assert "remove it from config.runnerEnv" in result.stderr


def test_the_proxy_needs_the_secrets_name(tmp_path: Path) -> None:
    values = {"gateway": {"modelProxy": {"enabled": True}}}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    result = run_helm("template", "r", str(Path(__file__).parents[2] / "helm" / "corral"),
                      "-f", str(path))  # fmt: skip
    assert result.returncode != 0 and "apiKeySecret.name is required" in result.stderr


def test_the_spend_ledger_is_the_one_configmap_the_gateway_may_patch(tmp_path: Path) -> None:
    manifests = render(tmp_path, ON)
    config = _config(manifests)
    assert config.model_proxy is not None
    role = one(
        manifests, "Role", f"{config.model_proxy.spend_config_map and 'corral-gateway'}-spend"
    )
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": [""], "resources": ["configmaps"],
                      "resourceNames": [config.model_proxy.spend_config_map],
                      "verbs": ["get", "patch"]}]  # fmt: skip
    assert config.model_proxy.spend_config_map == "corral-model-spend"


def test_a_namespace_key_is_readable_by_the_gateway_and_nothing_more(tmp_path: Path) -> None:
    keys = {"team-a": "team-a-key", "team-b": "anthropic"}
    values = {"gateway": {**ON["gateway"], "modelProxy": {**ON["gateway"]["modelProxy"],
                                                          "namespaceKeys": keys}}}  # fmt: skip
    manifests = render(tmp_path, values)
    assert _config(manifests).model_proxy.namespace_keys == keys  # type: ignore[union-attr]
    gateway_account = one(manifests, "ServiceAccount", gateway=True)["metadata"]["name"]
    for namespace, secret in keys.items():
        [role] = [m for m in manifests if m["kind"] == "Role"
                  and m["metadata"]["namespace"] == namespace]  # fmt: skip
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret],
             "verbs": ["get"]}
        ]  # fmt: skip
        [binding] = [m for m in manifests if m["kind"] == "RoleBinding"
                     and m["metadata"]["namespace"] == namespace]  # fmt: skip
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": gateway_account, "namespace": NAMESPACE}
        ]
    # Nothing else of the gateway's grants Secrets.
    roles = [m for m in manifests if m["kind"] in ("Role", "ClusterRole") and is_gateway(m)]
    granted = [r for m in roles for r in m["rules"] if "secrets" in r["resources"]]
    assert len(granted) == len(keys)


def test_a_namespace_key_must_name_a_secret(tmp_path: Path) -> None:
    proxy = ON["gateway"]["modelProxy"]
    chart = str(Path(__file__).parents[2] / "helm" / "corral")
    for keys, message in (
        ({"Team_A": "k"}, 'namespaceKeys: "Team_A" is not a namespace name'),
        ({"team-a": "Not/A/Name"}, "/gateway/modelProxy/namespaceKeys/team-a"),
    ):
        values = {"gateway": {**ON["gateway"], "modelProxy": {**proxy, "namespaceKeys": keys}}}
        done = run_helm("template", "r", chart, values=values, tmp=tmp_path)
        assert done.returncode != 0 and message in done.stderr, done.stderr
