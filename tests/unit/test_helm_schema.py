"""The Helm chart without a cluster: values.schema.json, and what `helm template` renders.

Helm validates values against values.schema.json on lint, template, install and upgrade;
these tests run the real `helm` binary (built from its Go module into the cache) and check
that bad values fail with a message naming the key, and that the rendered objects agree
with the operator's own code: its CLI flags, OperatorConfig, metrics and CRD.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.api.units import DURATION_PATTERN, QUANTITY_PATTERN
from corral.api.v1alpha1 import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from corral.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "corral"
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
RELEASE = "corral"
NAMESPACE = "corral-system"
KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}

Manifest = dict[str, Any]


@cache
def helm() -> str:
    from corral.cluster.build import binary_path, ensure_built

    ensure_built(["helm"])
    return str(binary_path("helm"))


def run_helm(
    *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [helm(), *args]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
        argv += ["-f", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def render(tmp_path: Path, values: dict[str, Any] | None = None, *sets: str) -> list[Manifest]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for item in sets:
        args += ["--set", item]
    result = run_helm(*args, values=values, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_gateway(manifest: Manifest) -> bool:
    """The gateway's objects (and the session roles it ships), apart from the operator's."""
    labels = manifest["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/component") == "gateway"


def one(
    manifests: list[Manifest], kind: str, name: str | None = None, gateway: bool = False
) -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind
        and (name is None or m["metadata"]["name"] == name)
        and (name is not None or is_gateway(m) == gateway)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


# --- the CRD -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["agentsessions.yaml", "sessionguardrails.yaml"])
def test_chart_crd_is_the_generated_crd(name: str) -> None:
    """helm/corral/crds/ holds copies of crds/*.yaml (themselves generated)."""
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == ["agentsessions.yaml", "sessionguardrails.yaml"]
    generated = (ROOT / "crds" / name).read_text(encoding="utf-8")
    copied = (CHART / "crds" / name).read_text(encoding="utf-8")
    assert copied == generated, (
        f"helm/corral/crds/{name} differs from crds/{name}: run `cp crds/{name} helm/corral/crds/`"
    )


# --- values.schema.json ------------------------------------------------------------------


def test_default_values_lint_clean() -> None:
    result = run_helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    (
        "replicas below one",
        {"replicaCount": 0},
        "at '/replicaCount': minimum: got 0, want 1",
    ),
    (
        "replicas not an integer",
        {"replicaCount": 1.5},
        "at '/replicaCount': got number, want integer",
    ),
    (
        "replicas a string",
        {"replicaCount": "two"},
        "at '/replicaCount': got string, want integer",
    ),
    (
        "image pull policy outside its enum",
        {"image": {"pullPolicy": "Sometimes"}},
        "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
    ),
    (
        "runner pull policy outside its enum",
        {"config": {"imagePullPolicy": "sometimes"}},
        "at '/config/imagePullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
    ),
    (
        "memory limit not a quantity",
        {"resources": {"limits": {"memory": "lots"}}},
        "at '/resources/limits/memory': 'lots' does not match pattern",
    ),
    (
        "negative cpu request",
        {"resources": {"requests": {"cpu": "-1"}}},
        "at '/resources/requests/cpu': '-1' does not match pattern",
    ),
    (
        "watched namespace not a DNS label",
        {"watchNamespaces": ["team-a", "Team_B"]},
        "at '/watchNamespaces/1': 'Team_B' does not match pattern",
    ),
    (
        "watched namespace listed twice",
        {"watchNamespaces": ["team-a", "team-a"]},
        "at '/watchNamespaces': items at 0 and 1 are equal",
    ),
    (
        "unknown top-level key (a typo)",
        {"replicaCunt": 3},
        "at '': additional properties 'replicaCunt' not allowed",
    ),
    (
        "unknown nested key",
        {"networkPolicy": {"enable": False}},
        "at '/networkPolicy': additional properties 'enable' not allowed",
    ),
    (
        "negative price per container-hour",
        {"config": {"pricePerContainerHourUsd": -0.5}},
        "at '/config/pricePerContainerHourUsd': minimum: got -0.5, want 0",
    ),
    (
        "config namespace (the chart sets it)",
        {"config": {"namespace": "elsewhere"}},
        "at '/config': additional properties 'namespace' not allowed",
    ),
    (
        "idle timeout not a duration",
        {"config": {"defaultIdleTimeout": "15 minutes"}},
        "at '/config/defaultIdleTimeout': '15 minutes' does not match pattern",
    ),
    (
        "toleration with an unknown effect",
        {"config": {"tolerations": [{"key": "a", "effect": "NoRun"}]}},
        "at '/config/tolerations/0/effect': value must be one of",
    ),
    (
        "operator port out of range",
        {"operator": {"port": 70000}},
        "at '/operator/port': maximum: got 70,000, want 65,535",
    ),
    (
        "runner scraper namespace not a DNS label",
        {"metrics": {"runnerPodMonitor": {"scraper": {"namespace": "Mon_itoring"}}}},
        "at '/metrics/runnerPodMonitor/scraper/namespace': 'Mon_itoring' does not match",
    ),
    (
        "operator as root",
        {"securityContext": {"runAsUser": 0}},
        "at '/securityContext/runAsUser': minimum: got 0, want 1",
    ),
    (
        "guardrails both denying and warning (the API server refuses the binding)",
        {"guardrails": {"validationActions": ["Deny", "Warn"]}},
        "at '/guardrails/validationActions': 'not' failed",
    ),
    (
        "guardrail action outside its enum",
        {"guardrails": {"validationActions": ["Block"]}},
        "at '/guardrails/validationActions/0': value must be one of 'Deny', 'Warn', 'Audit'",
    ),
    (
        "guardrail namespace not a DNS label",
        {"guardrails": {"namespaces": {"Team_A": {"maxStorage": "1Gi"}}}},
        "invalid propertyName 'Team_A'",
    ),
    (
        "guardrail with an unknown limit (a typo)",
        {"guardrails": {"namespaces": {"team-a": {"maxCpu": "2"}}}},
        "at '/guardrails/namespaces/team-a': additional properties 'maxCpu' not allowed",
    ),
    (
        "guardrail quantity as a number (the CRD takes strings)",
        {"guardrails": {"namespaces": {"team-a": {"maxResources": {"cpu": 2}}}}},
        "at '/guardrails/namespaces/team-a/maxResources/cpu': got number, want string",
    ),
    (
        "guardrail domain with a scheme",
        {"guardrails": {"namespaces": {"team-a": {"allowedDomains": ["https://github.com"]}}}},
        "at '/guardrails/namespaces/team-a/allowedDomains/0': 'https://github.com' does not match",
    ),
    (
        "guardrail budget of zero",
        {"guardrails": {"namespaces": {"team-a": {"maxBudgetUsd": 0}}}},
        "at '/guardrails/namespaces/team-a/maxBudgetUsd': exclusiveMinimum",
    ),
    (
        "guardrail mode outside its enum",
        {"guardrails": {"namespaces": {"team-a": {"mode": "warn"}}}},
        "at '/guardrails/namespaces/team-a/mode': value must be one of 'enforce', 'audit'",
    ),
    (
        "pre-pulled image with a space",
        {"imagePrePuller": {"extraImages": ["team/runner 2"]}},
        "at '/imagePrePuller/extraImages/0': 'team/runner 2' does not match pattern",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    [pytest.param(values, message, id=what) for what, values, message in BAD_VALUES],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    result = run_helm("template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_lint_reports_schema_errors_too() -> None:
    result = run_helm("lint", str(CHART), "--set", "image.pullPolicy=Sometimes")
    assert result.returncode != 0
    assert "at '/image/pullPolicy': value must be one of" in result.stdout + result.stderr


def test_set_on_the_command_line_is_validated_as_well() -> None:
    result = run_helm("template", RELEASE, str(CHART), "--set", "replicaCount=0")
    assert result.returncode != 0
    assert "at '/replicaCount': minimum: got 0, want 1" in result.stderr


def test_schema_patterns_are_the_operators_own() -> None:
    """The schema checks what the operator's models check, with the same expressions."""
    definitions = SCHEMA["definitions"]
    config = SCHEMA["properties"]["config"]["properties"]
    assert definitions["dnsLabel"]["pattern"] == DNS_LABEL_PATTERN
    # Resource quantities as the API server reads them, without a sign (never negative).
    assert definitions["quantity"]["pattern"] == QUANTITY_PATTERN.replace(r"^(\+|-)?", "^")
    assert config["defaultIdleTimeout"]["pattern"] == DURATION_PATTERN
    assert config["defaultCredentials"]["properties"]["secretName"]["pattern"] == (
        DNS_SUBDOMAIN_PATTERN
    )


def _config_fields(model: type[Any]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_config_schema_covers_operator_config() -> None:
    """Every OperatorConfig key can be set from values, and nothing else (namespace: chart)."""
    config = SCHEMA["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == _config_fields(OperatorConfig) - {"namespace"}
    pull = OperatorConfig.model_fields["image_pull_policy"].annotation
    assert set(config["properties"]["imagePullPolicy"]["enum"]) == set(pull.__args__)


def test_values_file_keys_are_all_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def walk(node: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
        if isinstance(node, dict) and "properties" in schema:
            for key, child in node.items():
                if key not in schema["properties"]:
                    yield f"{path}.{key}"
                else:
                    yield from walk(child, schema["properties"][key], f"{path}.{key}")

    assert list(walk(values, SCHEMA, "")) == []


# --- what the chart renders --------------------------------------------------------------


def test_rendered_config_is_an_operator_config(tmp_path: Path) -> None:
    values = {
        "config": {
            "tolerations": [KWOK_TOLERATION],
            "defaultModel": "claude-opus-4-1",
            "pricePerContainerHourUsd": 0.12,
            "runnerEnv": {"HTTPS_PROXY": "http://proxy:3128"},
            "defaultCredentials": {"secretName": "anthropic"},
        },
    }
    manifests = render(tmp_path, values)
    body = yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    config = OperatorConfig.model_validate(body)
    assert config.namespace == NAMESPACE
    assert config.default_model == "claude-opus-4-1"
    assert config.price_per_container_hour_usd == 0.12
    assert config.tolerations[0].key == "kwok.x-k8s.io/node"
    assert config.default_credentials is not None
    # Runners report activity to the operator's Service, and may reach its pods.
    service = one(manifests, "Service")
    port = service["spec"]["ports"][0]["port"]
    assert config.activity_url == (
        f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/v1/activity"
    )
    assert config.runner_env == {"HTTPS_PROXY": "http://proxy:3128"}
    assert config.extra_egress == []
    peer = config.activity_peer
    assert peer is not None
    assert peer.namespace == NAMESPACE
    # Every replica's pods (the leader among them), i.e. the Deployment's selector.
    deployment = one(manifests, "Deployment")
    assert peer.pod_labels == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == {**peer.pod_labels, "corral.dev/leader": "true"}
    assert [(p.port, p.protocol) for p in peer.ports] == [(8081, "TCP")]


def test_activity_settings_can_be_overridden(tmp_path: Path) -> None:
    gateway = "http://activity-gateway.platform.svc:8080/v1/activity"
    manifests = render(tmp_path, {"config": {"activityUrl": gateway}})
    body = yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    config = OperatorConfig.model_validate(body)
    assert config.activity_url == gateway
    assert config.activity_peer is not None  # still the chart's


def test_activity_reporting_can_be_turned_off(tmp_path: Path) -> None:
    manifests = render(tmp_path, None, "activityReporting.enabled=false")
    body = yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    config = OperatorConfig.model_validate(body)
    assert config.activity_url is None and config.activity_peer is None


def test_default_config_equals_the_operators_defaults(tmp_path: Path) -> None:
    """values.yaml repeats a few defaults for discoverability; they must not drift."""
    manifests = render(tmp_path, None, "activityReporting.enabled=false", "gateway.enabled=false")
    rendered = OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )
    assert rendered == OperatorConfig(namespace=NAMESPACE)


def _operator_container(manifests: list[Manifest]) -> Manifest:
    deployment = one(manifests, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_deployment_args_are_operator_flags(tmp_path: Path) -> None:
    from corral.cli import build_parser

    manifests = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    container = _operator_container(manifests)
    # No `command`: the image's entrypoint (tini + corral) stays; args name the subcommand.
    assert "command" not in container
    argv = [a.replace("$(POD_NAME)", "corral-abc") for a in container["args"]]
    assert argv[0] == "operator"
    args = build_parser(["operator"]).parse_args(argv)
    assert args.namespace == ["team-a", "team-b"]
    assert str(args.config) == "/etc/corral-operator/config.yaml"
    assert args.port == 8081
    assert args.identity == "corral-abc"
    assert args.lease_namespace == NAMESPACE
    assert args.lease_name == one(manifests, "Lease")["metadata"]["name"]
    assert not args.no_leader_election
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mount["config"] == str(args.config.parent)


def test_deployment_is_hardened(tmp_path: Path) -> None:
    manifests = render(tmp_path)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    container = _operator_container(manifests)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8081)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Startup waits in the container for readiness (no Unhealthy Events while it starts).
    startup = container["startupProbe"]
    assert startup["exec"]["command"][:4] == ["python", "-m", "corral.probe", "--port=8081"]
    assert startup["timeoutSeconds"] > 55 and startup["failureThreshold"] == 1
    # The kubelet probes startup only on ticks, the first before the container runs.
    assert startup["periodSeconds"] <= 2
    # Spread over nodes and zones, each constraint selecting this release's pods.
    selector = deployment["spec"]["selector"]["matchLabels"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


def test_config_change_rolls_the_pods(tmp_path: Path) -> None:
    def checksum(*sets: str) -> str:
        deployment = one(render(tmp_path, None, *sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("config.defaultModel=claude-opus-4-1")


def test_every_object_carries_the_release_labels(tmp_path: Path) -> None:
    manifests = render(
        tmp_path,
        {
            "watchNamespaces": ["team-a"],
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True},
            },
        },
    )
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, manifest["kind"]
        assert labels["app.kubernetes.io/name"] == "corral"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "corral-0.1.0"


def _rules(role: Manifest) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, ",".join(rule.get("resourceNames", [])), tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


SESSION_RULES = {
    ("corral.dev", "agentsessions", "", ("delete", "list", "watch")),
    ("corral.dev", "agentsessions/status", "", ("patch",)),
    ("corral.dev", "agentsessions/finalizers", "", ("update",)),
    ("", "pods", "", ("create", "delete", "get", "list", "patch", "watch")),
    ("", "pods/resize", "", ("patch",)),
    ("", "services", "", ("create", "delete", "get", "list", "patch", "watch")),
    ("", "persistentvolumeclaims", "", ("create", "get", "list", "watch")),
    (
        "networking.k8s.io",
        "networkpolicies",
        "",
        ("create", "delete", "get", "list", "patch", "watch"),
    ),
    ("", "secrets", "", ("get",)),
    ("", "events", "", ("create",)),
}
CRD_READ = ("apiextensions.k8s.io", "customresourcedefinitions", "", ("list", "watch"))


def test_cluster_wide_rbac(tmp_path: Path) -> None:
    manifests = render(tmp_path)
    assert _rules(one(manifests, "ClusterRole")) == SESSION_RULES | {CRD_READ}
    [lease_role] = [m for m in manifests if m["kind"] == "Role" and not is_gateway(m)]
    assert _rules(lease_role) == {
        ("coordination.k8s.io", "leases", f"{RELEASE}", ("get", "patch")),
        # The leader labels its own pod for the Service's selector: a patch, never a read.
        ("", "pods", "", ("patch",)),
    }
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]


def test_namespaced_rbac(tmp_path: Path) -> None:
    manifests = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    assert _rules(one(manifests, "ClusterRole")) == {
        CRD_READ,
        ("", "namespaces", "", ("list", "watch")),
    }
    roles = {
        m["metadata"]["namespace"]: m
        for m in manifests
        if m["kind"] == "Role" and not is_gateway(m)
    }
    assert set(roles) == {"team-a", "team-b", NAMESPACE}
    assert _rules(roles["team-a"]) == _rules(roles["team-b"]) == SESSION_RULES
    bindings = {
        m["metadata"]["namespace"]
        for m in manifests
        if m["kind"] == "RoleBinding" and not is_gateway(m)
    }
    assert bindings == {"team-a", "team-b", NAMESPACE}
    policy = one(manifests, "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]
    assert [s["namespaceSelector"]["matchLabels"] for s in sources] == [
        {"kubernetes.io/metadata.name": "team-a"},
        {"kubernetes.io/metadata.name": "team-b"},
    ]


def test_operator_network_policy(tmp_path: Path) -> None:
    manifests = render(tmp_path, {"networkPolicy": {"apiServer": {"cidrs": ["172.18.0.2/32"]}}})
    policy = one(manifests, "NetworkPolicy")["spec"]
    deployment = one(manifests, "Deployment")
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": 8081, "protocol": "TCP"}]
    [runners] = ingress["from"]
    assert runners["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "agentsession",
        "app.kubernetes.io/component": "runner",
        "app.kubernetes.io/managed-by": "corral",
    }
    api, dns = policy["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert {p["port"] for p in dns["ports"]} == {53}


def test_runner_pod_labels_match_the_renderer(make_session: Any) -> None:
    """The operator NetworkPolicy admits pods by the labels corral.render gives runners."""
    from corral.render.meta import RUNNER, labels

    session = make_session()
    rendered = labels(session, RUNNER)
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    block = helpers.split('define "corral.runnerPodLabels"')[1].split("{{- end }}")[0]
    expected = dict(re.findall(r"^([\w./-]+): (\S+)$", block, re.MULTILINE))
    assert expected and expected.items() <= rendered.items()


# --- monitoring --------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    """Every sample name the operator exports (counters as _total, histograms' series)."""
    from prometheus_client import Counter, Gauge, Histogram

    from corral.controller import metrics

    names = {"corral_sessions"}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(f"{value._name}_total")
        elif isinstance(value, Histogram):
            names |= {f"{value._name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\bcorral_[a-z_]+\b", expr))


def test_monitoring_objects(tmp_path: Path) -> None:
    manifests = render(
        tmp_path,
        {
            "metrics": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True},
            },
            "networkPolicy": {
                "metricsFrom": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    }
                ]
            },
        },
    )
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Every replica is scraped: the monitored Service selects all operator pods, not only
    # the leader (the Service runners report to selects corral.dev/leader=true).
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    [service] = [
        m for m in manifests if m["kind"] == "Service" and wanted <= m["metadata"]["labels"].items()
    ]
    deployment = one(manifests, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["clusterIP"] == "None"
    leader_service = one(manifests, "Service", RELEASE)
    assert leader_service["spec"]["selector"]["corral.dev/leader"] == "true"
    # job="<fullname>", which the alerts select on.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == RELEASE
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    ingress = one(manifests, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert len(ingress) == 2  # runners, and Prometheus

    exported = _exported_metric_names()
    rule = one(manifests, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) >= {
        "CorralSessionsFailing",
        "CorralReconcileErrorsRising",
        "CorralSessionsStuckPending",
    }
    for name, alert in alerts.items():
        expr = alert["expr"]
        assert _metrics_in(expr) and _metrics_in(expr) <= exported, name
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        assert f'namespace="{NAMESPACE}"' in expr, name
        assert f'job="{RELEASE}"' in expr, name
        assert alert["labels"]["severity"] in {"warning", "critical"}

    dashboard_map = one(manifests, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["corral.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set().union(*(_metrics_in(e) for e in exprs))
    assert used <= exported
    # Every metric the operator exports is on the dashboard.
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    assert {re.sub(r"_(bucket|count|sum)$", "", n) for n in used} == families
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_runner_pod_monitor(tmp_path: Path, make_session: Any) -> None:
    """Opt-in: a PodMonitor for runner pods, and the scraper's ingress in every session
    NetworkPolicy through the operator's config."""
    from corral.render import render_network_policy, render_pod

    scraper = {"namespace": "prometheus", "podLabels": {"app": "prometheus"}}
    values = {"metrics": {"runnerPodMonitor": {"enabled": True, "scraper": scraper}}}
    manifests = render(tmp_path, values)
    monitor = one(manifests, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"

    config = OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )
    session = make_session()
    pod = render_pod(session, config, 1)
    # The PodMonitor selects the runner pods the operator renders, on their named port.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    [port] = [p for p in container["ports"] if p["name"] == endpoint["port"]]
    policy = render_network_policy(session, config)
    admitted = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels") == {"app": "prometheus"}
            and peer["namespaceSelector"]["matchLabels"]
            == {"kubernetes.io/metadata.name": "prometheus"}
            for peer in rule["from"]
        )
    ]
    assert [r["ports"] for r in admitted] == [[{"port": port["containerPort"], "protocol": "TCP"}]]

    # Enabled without saying who scrapes: refused, naming the key.
    result = run_helm(
        "template", RELEASE, str(CHART),
        values={"metrics": {"runnerPodMonitor": {"enabled": True}}}, tmp=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "metrics.runnerPodMonitor.scraper.namespace is required" in result.stderr
    # With watchNamespaces, only those namespaces; off by default, and no scraper then.
    scoped = render(tmp_path, {**values, "watchNamespaces": ["team-a"]})
    assert one(scoped, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    default_config = yaml.safe_load(one(render(tmp_path), "ConfigMap")["data"]["config.yaml"])
    assert "metricsScraper" not in default_config


def test_monitoring_is_off_by_default(tmp_path: Path) -> None:
    kinds = {m["kind"] for m in render(tmp_path)}
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "Lease",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",  # the activity token key
        "DaemonSet",  # the image pre-puller
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",  # guardrails, inert
    }


# --- Argo CD health check ----------------------------------------------------------------

HEALTH_LUA = ROOT / "helm" / "argocd" / "agentsession-health.lua"


def test_install_doc_carries_the_health_check() -> None:
    doc = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    script = HEALTH_LUA.read_text(encoding="utf-8")
    indented = "".join(f"    {line}" if line.strip() else line for line in script.splitlines(True))
    assert "resource.customizations.health.corral.dev_AgentSession: |" in doc
    assert indented in doc, "docs/install.md must embed helm/argocd/agentsession-health.lua"


def _health(body: dict[str, Any]) -> dict[str, str]:
    lupa = pytest.importorskip("lupa", reason="lupa (Lua in Python) runs the Argo CD script")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    script = HEALTH_LUA.read_text(encoding="utf-8")
    run = lua.eval(f"function(obj)\n{script}\nend")
    result = run(to_lua(body))
    return dict(result.items())


def _status_after(make_session: Any, **observed: Any) -> dict[str, Any]:
    """The status the operator's own decide() writes for a new session."""
    from datetime import UTC, datetime

    from corral.controller.lifecycle import Observed, decide

    session = make_session("LongRunning", credentials={"secretName": "anthropic-api-key"})
    plan = decide(
        Observed(
            session=session,
            pods=[],
            has_service=False,
            has_network_policy=False,
            has_pvc=False,
            now=datetime.now(UTC),
            **observed,
        ),
        OperatorConfig(),
    )
    assert plan.status_patch is not None
    return {"metadata": {"name": "demo", "generation": 1}, "status": plan.status_patch}


def _ready(phase: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    condition = {"type": "Ready", "status": status, "reason": reason, "message": message}
    return {
        "metadata": {"name": "demo", "generation": 2},
        "status": {"phase": phase, "observedGeneration": 2, "conditions": [condition]},
    }


@pytest.mark.parametrize(
    ("body", "health"),
    [
        ({"metadata": {"name": "demo"}}, "Progressing"),
        (_ready("Running", "True", "Running", "the runner accepts messages"), "Healthy"),
        (_ready("Running", "False", "RunnerStarting"), "Progressing"),
        (_ready("Pending", "False", "PodPending"), "Progressing"),
        (_ready("Pending", "False", "ImagePullFailed", "ErrImagePull"), "Degraded"),
        (_ready("Idle", "False", "Idle"), "Healthy"),
        (_ready("Succeeded", "False", "Completed"), "Healthy"),
        (_ready("Suspended", "False", "Suspended"), "Suspended"),
        (_ready("Failed", "False", "ErrorMaxTurns", "max turns reached"), "Degraded"),
        (_ready("CrashLooping", "False", "CrashLooping", "restarted 3 times"), "Degraded"),
        (_ready("Pending", "False", "SpecTooLarge", "the spec is too large"), "Degraded"),
        (_ready("Pending", "False", "RunnerNotReady", "was ready and is not now"), "Degraded"),
        (
            {**_ready("Running", "True", "Running"), "metadata": {"name": "demo", "generation": 3}},
            "Progressing",
        ),
    ],
)
def test_argocd_health(body: dict[str, Any], health: str) -> None:
    assert _health(body)["status"] == health


def test_argocd_health_of_real_statuses(make_session: Any) -> None:
    from corral.controller.credentials import SecretCheck

    for check in (SecretCheck.NOT_FOUND, SecretCheck.UNLABELLED):
        missing = _health(_status_after(make_session, secret_check=check))
        assert missing["status"] == "Degraded"
        assert "anthropic-api-key" in missing["message"]
    starting = _health(_status_after(make_session, secret_check=SecretCheck.FOUND))
    assert starting["status"] == "Progressing"


def test_kind_config_matches_the_install_doc() -> None:
    """kind-config.yaml: no default CNI (Calico instead), and the NodePorts the doc uses."""
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text(encoding="utf-8"))
    doc = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    assert kind["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert kind["networking"]["disableDefaultCNI"] is True
    assert f"--name {kind['name']}" in doc
    [control_plane] = [n for n in kind["nodes"] if n["role"] == "control-plane"]
    for mapping in control_plane["extraPortMappings"]:
        assert f"nodePort={mapping['containerPort']}" in doc
        assert f"localhost:{mapping['hostPort']}" in doc


# --- the session gateway -----------------------------------------------------------------


# --- the image pre-puller ----------------------------------------------------------------


def _prepuller_pod(manifests: list[Manifest]) -> Manifest:
    [daemon_set] = [m for m in manifests if m["kind"] == "DaemonSet"]
    pod: Manifest = daemon_set["spec"]["template"]["spec"]
    return pod


def test_image_prepuller_keeps_session_images_where_sessions_run(tmp_path: Path) -> None:
    toleration = {"key": "agents", "operator": "Exists", "effect": "NoSchedule"}
    values = {
        "imagePullSecrets": [{"name": "registry"}],
        "config": {
            "nodeSelector": {"pool": "agents"},
            "tolerations": [toleration],
            "runtimeClassName": "gvisor",
        },
        "imagePrePuller": {"extraImages": ["team/runner:2"]},
    }
    manifests = render(tmp_path, values)
    config = OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )
    pod = _prepuller_pod(manifests)
    # On the nodes the operator's session pods may go to, and only there.
    assert pod["nodeSelector"] == config.node_selector == {"pool": "agents"}
    assert pod["tolerations"] == [toleration]
    assert pod["runtimeClassName"] == config.runtime_class_name == "gvisor"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    [runner] = pod["containers"]
    assert runner["image"] == config.default_image
    assert runner["imagePullPolicy"] == config.image_pull_policy
    assert "command" not in runner  # the image's tini stays PID 1
    [extra] = pod["initContainers"]
    assert extra["image"] == "team/runner:2"
    # Hardened like every pod of the chart (Pod Security `restricted`), and nothing more.
    assert pod["automountServiceAccountToken"] is False
    assert "volumes" not in pod and "serviceAccountName" not in pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (runner, extra):
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["resources"]["limits"]["memory"] == "16Mi"


def test_image_prepuller_follows_the_runner_image_and_can_be_off(tmp_path: Path) -> None:
    def image(*sets: str) -> str | None:
        manifests = render(tmp_path, None, *sets)
        if not any(m["kind"] == "DaemonSet" for m in manifests):
            return None
        return str(_prepuller_pod(manifests)["containers"][0]["image"])

    assert image() == "corral.dev/runner:0.1.0"
    assert image("runnerImage.tag=0.2.0") == "corral.dev/runner:0.2.0"
    assert image("config.defaultImage=team/runner:3") == "team/runner:3"
    assert image("imagePrePuller.enabled=false") is None


def test_gateway_runs_hardened_from_the_operator_image(tmp_path: Path) -> None:
    from corral.cli import build_parser

    manifests = render(tmp_path)
    deployment = one(manifests, "Deployment", gateway=True)
    operator = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "command" not in container  # the image's entrypoint (tini) stays PID 1
    args = build_parser(["gateway"]).parse_args(container["args"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.key_file).startswith(mounts["session-key"] + "/")
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert one(manifests, "PodDisruptionBudget", gateway=True)["spec"]["maxUnavailable"] == 1
    service = one(manifests, "Service", gateway=True)
    labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    # The operator admits exactly these pods into every session's runner.
    config = OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )
    assert config.gateway is not None and config.gateway.namespace == NAMESPACE
    assert all(labels.get(k) == v for k, v in config.gateway.pod_labels.items())


def test_gateway_idle_connection_time_comes_from_the_values(tmp_path: Path) -> None:
    from corral.cli import build_parser

    def idle_seconds(values: dict[str, Any] | None) -> float:
        deployment = one(render(tmp_path, values), "Deployment", gateway=True)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        return float(build_parser(["gateway"]).parse_args(container["args"]).idle_seconds)

    assert idle_seconds(None) == 120
    assert idle_seconds({"gateway": {"idleSeconds": 15}}) == 15


def test_gateway_rbac_is_the_least_it_needs(tmp_path: Path) -> None:
    manifests = render(tmp_path)
    role = one(manifests, "ClusterRole", f"{NAMESPACE}-{RELEASE}-gateway")
    assert _rules(role) == {
        ("authentication.k8s.io", "tokenreviews", "", ("create",)),
        ("authorization.k8s.io", "subjectaccessreviews", "", ("create",)),
        ("corral.dev", "agentsessions", "", ("list", "patch", "watch")),
        ("", "pods", "", ("list", "watch")),
        ("", "events", "", ("create",)),
    }
    proxy = one(manifests, "Role", f"{RELEASE}-gateway-proxy")
    [rule] = proxy["rules"]
    assert rule["resources"] == ["services/proxy"]
    assert set(rule["resourceNames"]) == {f"{RELEASE}-gateway", f"{RELEASE}-gateway:http"}
    binding = one(manifests, "RoleBinding", f"{RELEASE}-gateway-proxy")
    assert binding["subjects"][0]["name"] == "system:authenticated"
    user = one(manifests, "ClusterRole", "corral-session-user")
    viewer = one(manifests, "ClusterRole", "corral-session-viewer")
    assert ("corral.dev", "agentsessions/connect", "", ("create", "get")) in _rules(user)
    assert ("corral.dev", "agentsessions/connect", "", ("get",)) in _rules(viewer)
    namespaced = render(tmp_path, {"watchNamespaces": ["team-a"]})
    cluster = one(namespaced, "ClusterRole", f"{NAMESPACE}-{RELEASE}-gateway")
    assert {r[1] for r in _rules(cluster)} == {"tokenreviews", "subjectaccessreviews"}
    team = one(namespaced, "Role", f"{RELEASE}-gateway")
    assert team["metadata"]["namespace"] == "team-a"


def test_gateway_network_policy_and_external_routes(tmp_path: Path) -> None:
    manifests = render(tmp_path)
    policy = one(manifests, "NetworkPolicy", gateway=True)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    runner_rule = policy["spec"]["egress"][-1]
    assert runner_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "runner"
    )
    assert not [m for m in manifests if m["kind"] in ("Ingress", "HTTPRoute")]
    exposed = render(
        tmp_path,
        {
            "gateway": {
                "ingress": {"enabled": True, "host": "agents.example.com"},
                "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
            }
        },
    )
    ingress = one(exposed, "Ingress", gateway=True)
    assert ingress["spec"]["rules"][0]["host"] == "agents.example.com"
    route = one(exposed, "HTTPRoute", gateway=True)
    assert route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/sessions/"
    missing = run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--set", "gateway.ingress.enabled=true", tmp=tmp_path,
    )  # fmt: skip
    assert missing.returncode != 0 and "gateway.ingress.host is required" in missing.stderr


def test_gateway_off_leaves_runner_ingress_as_before(tmp_path: Path) -> None:
    manifests = render(tmp_path, None, "gateway.enabled=false")
    assert not [m for m in manifests if is_gateway(m)]
    config = OperatorConfig.model_validate(
        yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    )
    assert config.gateway is None


# --- admin guardrails --------------------------------------------------------------------


def _guardrail_objects(manifests: list[Manifest]) -> dict[str, list[Manifest]]:
    found: dict[str, list[Manifest]] = {}
    for m in manifests:
        if (m["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "guardrails":
            found.setdefault(m["kind"], []).append(m)
    return found


def test_guardrails_render_a_policy_and_two_bindings_by_default(tmp_path: Path) -> None:
    """Enabled by default and inert: no SessionGuardrail, so no namespace is restricted."""
    found = _guardrail_objects(render(tmp_path))
    assert sorted(found) == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    [policy] = found["ValidatingAdmissionPolicy"]
    name = f"{NAMESPACE}-{RELEASE}-guardrails"  # cluster-scoped: one per release namespace
    assert policy["metadata"]["name"] == name
    assert policy["spec"]["paramKind"] == {
        "apiVersion": "corral.dev/v1alpha1", "kind": "SessionGuardrail",
    }  # fmt: skip
    assert policy["spec"]["failurePolicy"] == "Fail"
    bindings = {b["metadata"]["name"]: b["spec"] for b in found["ValidatingAdmissionPolicyBinding"]}
    assert bindings[name]["validationActions"] == ["Deny"]
    assert bindings[f"{name}-audit"]["validationActions"] == ["Warn", "Audit"]
    for spec in bindings.values():
        assert spec["policyName"] == name
        # The session's own namespace (no paramRef.namespace); none there: not restricted.
        assert "namespace" not in spec["paramRef"]
        assert spec["paramRef"]["parameterNotFoundAction"] == "Allow"
    # Every guardrail goes to exactly one binding, by its mode label.
    assert bindings[name]["paramRef"]["selector"] == {
        "matchExpressions": [
            {"key": "corral.dev/guardrail-mode", "operator": "NotIn", "values": ["audit"]}
        ]
    }
    assert bindings[f"{name}-audit"]["paramRef"]["selector"] == {
        "matchLabels": {"corral.dev/guardrail-mode": "audit"}
    }


def test_guardrails_can_be_disabled_or_set_to_warn(tmp_path: Path) -> None:
    assert _guardrail_objects(render(tmp_path, None, "guardrails.enabled=false")) == {}
    values = {"guardrails": {"validationActions": ["Warn", "Audit"], "failurePolicy": "Ignore"}}
    found = _guardrail_objects(render(tmp_path, values))
    actions = sorted(
        b["spec"]["validationActions"] for b in found["ValidatingAdmissionPolicyBinding"]
    )
    assert actions == [["Warn", "Audit"], ["Warn", "Audit"]]
    assert found["ValidatingAdmissionPolicy"][0]["spec"]["failurePolicy"] == "Ignore"


def test_guardrail_values_render_session_guardrails_the_crd_accepts(tmp_path: Path) -> None:
    from corral.api.guardrails import SessionGuardrail

    limits = {
        "allowedImagePrefixes": ["registry.example.com/corral/"],
        "allowedEgressCidrs": ["10.20.0.0/16"],
        "allowedDomains": ["github.com", "*.pypi.org", "git.example:8443"],
        "maxResources": {"cpu": "2", "memory": "4Gi"},
        "maxStorage": "20Gi",
        "maxBudgetUsd": 5,
    }
    values = {"guardrails": {"namespaces": {
        "team-a": limits, "team-b": {"mode": "audit", "allowedEgressCidrs": []},
    }}}  # fmt: skip
    found = _guardrail_objects(render(tmp_path, values))
    guardrails = {g["metadata"]["namespace"]: g for g in found["SessionGuardrail"]}
    assert sorted(guardrails) == ["team-a", "team-b"]
    team_a = SessionGuardrail.model_validate(guardrails["team-a"])
    assert team_a.spec.model_dump(by_alias=True, exclude_none=True) == limits
    assert "corral.dev/guardrail-mode" not in guardrails["team-a"]["metadata"]["labels"]
    team_b = guardrails["team-b"]
    assert team_b["metadata"]["labels"]["corral.dev/guardrail-mode"] == "audit"
    # `mode` is the chart's, not the CRD's; an empty list stays (it allows nothing).
    assert team_b["spec"] == {"allowedEgressCidrs": []}
    assert SessionGuardrail.model_validate(team_b).spec.allowed_egress_cidrs == []


def test_an_upgrade_without_the_guardrail_crd_stops_with_the_fix() -> None:
    """helm upgrade does not add crds/: without the SessionGuardrail CRD the policy's
    paramKind would not resolve and every AgentSession write would be refused."""
    base = ["template", RELEASE, str(CHART), "--is-upgrade"]
    result = run_helm(*base)
    assert result.returncode != 0
    assert "needs the SessionGuardrail CRD" in result.stderr
    assert "kubectl apply --server-side -f helm/corral/crds/" in result.stderr
    assert run_helm(*base, "--set", "guardrails.enabled=false").returncode == 0
    crd_present = run_helm(*base, "--api-versions", "corral.dev/v1alpha1/SessionGuardrail")
    assert crd_present.returncode == 0, crd_present.stderr
