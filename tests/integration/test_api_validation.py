"""The API server itself refuses bad AgentSessions: schema, CEL and transition rules.

Every case is created through CustomObjectsApi against the real kube-apiserver with the
CRD generated from the models; each must come back 422 Invalid with a cause that names
the offending field, so a rule that silently stops firing (or fires on the wrong field)
fails here. Valid counterparts are accepted, so a refusal is not an accident of the base.
These tests need the CRD only, not the operator.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.api import v1alpha1 as api
from strategies import INVALID_SPECS, INVALID_UPDATES, SESSION_EXAMPLES, Invalid, load_manifest
from testrun import NAMESPACE_PREFIX, RESTRICTED_LABELS

pytestmark = pytest.mark.integration

SHARED_AGENTS = [{"name": "author"}, {"name": "reviewer"}]
VALID_SPECS: dict[str, dict[str, Any]] = {
    "Ephemeral": {"pattern": "Ephemeral", "prompt": "Say hello."},
    "LongRunning": {"pattern": "LongRunning"},
    "Hybrid": {"pattern": "Hybrid", "idleTimeout": "15m", "storage": {"size": "1Gi"}},
    "Shared": {"pattern": "Shared", "agents": SHARED_AGENTS},
}


@dataclass(frozen=True)
class Bad:
    """A spec the server must refuse: `field` must be named, `says` must be in the message."""

    why: str
    spec: dict[str, Any]
    field: str
    says: str


LONG = VALID_SPECS["LongRunning"]
BAD_SPECS = [
    Bad("unknown pattern", {"pattern": "Batch"}, "spec.pattern", 'Unsupported value: "Batch"'),
    Bad("no pattern", {}, "spec.pattern", "Required value"),
    Bad(
        "Ephemeral without prompt",
        {"pattern": "Ephemeral"},
        "spec.prompt",
        "spec.prompt is required when spec.pattern is Ephemeral",
    ),
    Bad(
        "agents on a LongRunning session",
        {**LONG, "agents": SHARED_AGENTS},
        "spec.agents",
        "spec.agents is only allowed when spec.pattern is Shared",
    ),
    Bad(
        "duplicate agent names",
        {"pattern": "Shared", "agents": [{"name": "author"}, {"name": "author"}]},
        "spec.agents[1]",
        'Duplicate value: {"name":"author"}',
    ),
    Bad(
        "one agent for Shared",
        {"pattern": "Shared", "agents": [{"name": "author"}]},
        "spec.agents",
        "should have at least 2 items",
    ),
    Bad(
        "Shared without agents",
        {"pattern": "Shared"},
        "spec.agents",
        "spec.agents is required when spec.pattern is Shared",
    ),
    Bad(
        "maxTurns 0",
        {**LONG, "maxTurns": 0},
        "spec.maxTurns",
        "should be greater than or equal to 1",
    ),
    Bad(
        "maxTurns above the cap",
        {**LONG, "maxTurns": 10_001},
        "spec.maxTurns",
        "should be less than or equal to 10000",
    ),
    Bad(
        "memory 'lots'",
        {**LONG, "resources": {"memory": "lots"}},
        "spec.resources.memory",
        'Invalid value: "lots"',
    ),
    Bad(
        "memory below the minimum",
        {**LONG, "resources": {"memory": "64Mi"}},
        "spec.resources.memory",
        "resources.memory must be at least 256Mi",
    ),
    Bad(
        "memory just below what the CLI needs (it would be OOMKilled in a loop)",
        {**LONG, "resources": {"memory": "255Mi"}},
        "spec.resources.memory",
        "the Claude CLI alone uses about 230Mi, so a smaller limit would have the runner "
        "killed (OOMKilled) again and again",
    ),
    Bad(
        "cpu 0",
        {**LONG, "resources": {"cpu": "0"}},
        "spec.resources.cpu",
        "resources.cpu must be greater than 0",
    ),
    Bad(
        "disk below the minimum",
        {**LONG, "resources": {"disk": "10Mi"}},
        "spec.resources.disk",
        "resources.disk must be at least 64Mi",
    ),
    Bad(
        "idleTimeout on Ephemeral",
        {"pattern": "Ephemeral", "prompt": "x", "idleTimeout": "5m"},
        "spec.idleTimeout",
        "spec.idleTimeout is only allowed when spec.pattern is Hybrid",
    ),
    Bad(
        "malformed idleTimeout",
        {"pattern": "Hybrid", "idleTimeout": "5 minutes"},
        "spec.idleTimeout",
        'Invalid value: "5 minutes"',
    ),
    Bad(
        "idleTimeout below 1s",
        {"pattern": "Hybrid", "idleTimeout": "500ms"},
        "spec.idleTimeout",
        "spec.idleTimeout must be at least 1s",
    ),
    Bad(
        "storage on LongRunning",
        {**LONG, "storage": {"size": "1Gi"}},
        "spec.storage",
        "spec.storage is only allowed when spec.pattern is Hybrid",
    ),
    Bad(
        "zero storage size",
        {"pattern": "Hybrid", "storage": {"size": "0"}},
        "spec.storage.size",
        "storage.size must be at least 1Gi",
    ),
    Bad(
        "storage below the sane minimum",
        {"pattern": "Hybrid", "storage": {"size": "100Mi"}},
        "spec.storage.size",
        "storage.size must be at least 1Gi, e.g. 5Gi: the volume holds the workspace",
    ),
    Bad(
        "cleanupAfterFinished on LongRunning",
        {**LONG, "cleanupAfterFinished": "Children"},
        "spec.cleanupAfterFinished",
        "spec.cleanupAfterFinished is only allowed when spec.pattern is Ephemeral",
    ),
    Bad(
        "cleanupAfterFinished without a TTL",
        {"pattern": "Ephemeral", "prompt": "x", "cleanupAfterFinished": "Children"},
        "spec.cleanupAfterFinished",
        "spec.cleanupAfterFinished needs spec.ttlSecondsAfterFinished",
    ),
    Bad(
        "unknown cleanupAfterFinished",
        {
            "pattern": "Ephemeral",
            "prompt": "x",
            "ttlSecondsAfterFinished": 60,
            "cleanupAfterFinished": "Pod",
        },
        "spec.cleanupAfterFinished",
        'Unsupported value: "Pod"',
    ),
    Bad(
        "ttlSecondsAfterFinished on LongRunning",
        {**LONG, "ttlSecondsAfterFinished": 60},
        "spec.ttlSecondsAfterFinished",
        "spec.ttlSecondsAfterFinished is only allowed when spec.pattern is Ephemeral",
    ),
    Bad(
        "activeDeadlineSeconds on Hybrid",
        {"pattern": "Hybrid", "activeDeadlineSeconds": 60},
        "spec.activeDeadlineSeconds",
        "spec.activeDeadlineSeconds is only allowed when spec.pattern is Ephemeral",
    ),
    Bad(
        "retries on Shared",
        {"pattern": "Shared", "agents": SHARED_AGENTS, "retries": 1},
        "spec.retries",
        "spec.retries is only allowed when spec.pattern is Ephemeral",
    ),
    Bad(
        "egress CIDR without a prefix length",
        {**LONG, "network": {"egress": [{"cidr": "10.0.0.0"}]}},
        "spec.network.egress[0].cidr",
        "network.egress[].cidr must be a CIDR",
    ),
    Bad(
        "egress CIDR out of range",
        {**LONG, "network": {"egress": [{"cidr": "300.1.2.3/8"}]}},
        "spec.network.egress[0].cidr",
        "network.egress[].cidr must be a CIDR",
    ),
    Bad(
        "egress to the cloud metadata address",
        {**LONG, "network": {"egress": [{"cidr": "169.254.169.254/32"}]}},
        "spec.network.egress[0].cidr",
        "must not be link-local",
    ),
    Bad(
        "egress port 0",
        {**LONG, "network": {"egress": [{"cidr": "10.0.0.0/8", "ports": [{"port": 0}]}]}},
        "spec.network.egress[0].ports[0].port",
        "should be greater than or equal to 1",
    ),
    Bad(
        "allowed domain that is a URL",
        {**LONG, "network": {"allowedDomains": ["https://github.com"]}},
        "spec.network.allowedDomains[0]",
        'Invalid value: "https://github.com"',
    ),
    Bad(
        "allowed domain port 0",
        {**LONG, "network": {"allowedDomains": ["github.com:0"]}},
        "spec.network.allowedDomains",
        "network.allowedDomains[] ports must be 1-65535",
    ),
    Bad(
        "ingress namespace that is no DNS label",
        {**LONG, "network": {"ingressFromNamespaces": ["Team_A"]}},
        "spec.network.ingressFromNamespaces[0]",
        'Invalid value: "Team_A"',
    ),
    Bad(
        "unknown permissionMode",
        {**LONG, "permissionMode": "yolo"},
        "spec.permissionMode",
        'Unsupported value: "yolo"',
    ),
    Bad(
        "negative maxBudgetUsd",
        {**LONG, "maxBudgetUsd": -1},
        "spec.maxBudgetUsd",
        "should be greater than 0",
    ),
    Bad(
        "zero maxBudgetUsd",
        {**LONG, "maxBudgetUsd": 0},
        "spec.maxBudgetUsd",
        "should be greater than 0",
    ),
    Bad(
        "duplicate allowed tools",
        {**LONG, "allowedTools": ["Bash", "Bash"]},
        "spec.allowedTools[1]",
        'Duplicate value: "Bash"',
    ),
    Bad(
        "MCP server over ftp",
        {**LONG, "mcpServers": [{"name": "x", "url": "ftp://mcp.example.com"}]},
        "spec.mcpServers[0].url",
        'Invalid value: "ftp://mcp.example.com"',
    ),
    Bad(
        "secret key '.' (a pod's secretKeyRef refuses it)",
        {**LONG, "credentials": {"secretName": "key", "key": "."}},
        "spec.credentials.key",
        'Invalid value: "."',
    ),
    Bad(
        "secret key starting with '..'",
        {**LONG, "credentials": {"secretName": "key", "key": "..data"}},
        "spec.credentials.key",
        'Invalid value: "..data"',
    ),
    Bad(
        "secret name that is no DNS name",
        {**LONG, "credentials": {"secretName": "Not_A_Name"}},
        "spec.credentials.secretName",
        'Invalid value: "Not_A_Name"',
    ),
    Bad(
        "toleration Exists with a value",
        {
            **LONG,
            "scheduling": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a"}]},
        },
        "spec.scheduling.tolerations[0].value",
        "tolerations[].value must be empty when operator is Exists (it matches any value): "
        "remove value, or use operator Equal",
    ),
    Bad(
        "toleration Equal (the default) without a key",
        {**LONG, "scheduling": {"tolerations": [{"value": "gpu", "effect": "NoSchedule"}]}},
        "spec.scheduling.tolerations[0].key",
        "tolerations[].key is required when operator is Equal (the default): set key, or use "
        "operator Exists",
    ),
    Bad(
        "tolerationSeconds with effect NoSchedule",
        {
            **LONG,
            "scheduling": {
                "tolerations": [
                    {"key": "k", "operator": "Exists"},
                    {"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 30},
                ]
            },
        },
        "spec.scheduling.tolerations[1].tolerationSeconds",
        "tolerations[].tolerationSeconds is only allowed when effect is NoExecute: remove it, "
        "or set effect: NoExecute",
    ),
    Bad(
        "tolerationSeconds without an effect",
        {**LONG, "scheduling": {"tolerations": [{"operator": "Exists", "tolerationSeconds": 1}]}},
        "spec.scheduling.tolerations[0].tolerationSeconds",
        "tolerationSeconds is only allowed when effect is NoExecute",
    ),
    Bad(
        "toleration operator Lt",
        {**LONG, "scheduling": {"tolerations": [{"key": "a", "operator": "Lt", "value": "5"}]}},
        "spec.scheduling.tolerations[0].operator",
        'Unsupported value: "Lt"',
    ),
    Bad(
        "toleration key with a space",
        {**LONG, "scheduling": {"tolerations": [{"key": "my key", "operator": "Exists"}]}},
        "spec.scheduling.tolerations[0].key",
        'Invalid value: "my key"',
    ),
    Bad(
        "toleration key with a prefix beyond 253 characters",
        {**LONG, "scheduling": {"tolerations": [{"key": "a" * 254 + "/b", "operator": "Exists"}]}},
        "spec.scheduling.tolerations[0].key",
        "the prefix before '/' must be at most 253 characters",
    ),
    Bad(
        "33 tolerations",
        {**LONG, "scheduling": {"tolerations": [{"operator": "Exists"}] * 33}},
        "spec.scheduling.tolerations",
        "must have at most 32 items",
    ),
    Bad(
        "nodeSelector key that is no label key",
        {**LONG, "scheduling": {"nodeSelector": {"node pool": "agents"}}},
        "spec.scheduling.nodeSelector",
        "scheduling.nodeSelector keys must be label keys",
    ),
    Bad(
        "nodeSelector key with a name beyond 63 characters",
        {**LONG, "scheduling": {"nodeSelector": {"example.com/" + "n" * 64: "a"}}},
        "spec.scheduling.nodeSelector",
        "scheduling.nodeSelector keys must be label keys",
    ),
    Bad(
        "nodeSelector value that is no label value",
        {**LONG, "scheduling": {"nodeSelector": {"pool": "agents!"}}},
        "spec.scheduling.nodeSelector.pool",
        'Invalid value: "agents!"',
    ),
    Bad(
        "33 nodeSelector entries",
        {**LONG, "scheduling": {"nodeSelector": {f"k{i}": "v" for i in range(33)}}},
        "spec.scheduling.nodeSelector",
        "must have at most 32 items",
    ),
]


@pytest.fixture(scope="module")
def validation_namespace(core: client.CoreV1Api, crd: None) -> Iterator[str]:
    """One namespace for the whole module: refused objects leave nothing behind."""
    name = f"{NAMESPACE_PREFIX}validation-{uuid.uuid4().hex[:4]}"
    meta = client.V1ObjectMeta(name=name, labels=RESTRICTED_LABELS)
    core.create_namespace(client.V1Namespace(metadata=meta))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, body, **kwargs
    )
    return created


def _refusal(error: ApiException) -> tuple[str, list[dict[str, Any]]]:
    assert error.status == 422, f"expected 422 Invalid, got {error.status}: {error.body}"
    status = json.loads(error.body)
    assert status["reason"] == "Invalid", status
    return status["message"], status["details"].get("causes", [])


def _refused(
    custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    with pytest.raises(ApiException) as caught:
        _create(custom, namespace, body)
    return _refusal(caught.value)


@pytest.mark.parametrize("pattern", list(VALID_SPECS))
def test_valid_base_specs_are_accepted(
    custom: client.CustomObjectsApi, validation_namespace: str, pattern: str
) -> None:
    """The bases the bad cases are cut from pass: a refusal below is the mutation's doing."""
    name = f"valid-{pattern.lower()}"
    created = _create(custom, validation_namespace, _manifest(name, VALID_SPECS[pattern]))
    assert created["metadata"]["name"] == name
    # Server-side defaults come from the models' defaults.
    assert created["spec"]["maxTurns"] == 50
    assert created["spec"]["resources"] == {"cpu": "1", "memory": "1Gi", "disk": "5Gi"}
    assert created["spec"]["network"]["allowPublicHttps"] is True


@pytest.mark.parametrize("bad", BAD_SPECS, ids=lambda bad: bad.why)
def test_bad_spec_is_refused_naming_the_field(
    custom: client.CustomObjectsApi, validation_namespace: str, bad: Bad
) -> None:
    message, causes = _refused(custom, validation_namespace, _manifest("bad", bad.spec))
    fields = [cause.get("field") for cause in causes]
    assert bad.field in fields, f"no cause names {bad.field}: {causes}"
    named = [c["message"] for c in causes if c.get("field") == bad.field]
    assert any(bad.says in m for m in named), f"{bad.says!r} not in {named}"
    assert f"{bad.field}: " in message  # the text kubectl prints names the field too
    # Nothing was stored.
    listed = custom.list_namespaced_custom_object(
        api.GROUP, api.VERSION, validation_namespace, api.PLURAL
    )
    assert "bad" not in [item["metadata"]["name"] for item in listed["items"]]


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda case: case.why)
def test_what_the_models_refuse_the_server_refuses(
    custom: client.CustomObjectsApi, validation_namespace: str, case: Invalid
) -> None:
    """strategies.INVALID_SPECS (which the unit tests feed to the models) on the server:
    refused too, and with the very message of the CEL rule the models repeat."""
    message, causes = _refused(custom, validation_namespace, _manifest("invalid", case.spec))
    assert causes, message
    if case.cel:
        assert case.message in message


def test_unknown_field_is_refused_with_strict_field_validation(
    custom: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """kubectl validates strictly by default: a misspelt field is an error, not a no-op."""
    body = _manifest("typo", {**LONG, "maxTurn": 3})
    with pytest.raises(ApiException) as caught:
        _create(custom, validation_namespace, body, field_validation="Strict")
    assert caught.value.status == 400
    assert 'unknown field "spec.maxTurn"' in json.loads(caught.value.body)["message"]


@pytest.mark.parametrize(
    ("why", "old", "new", "says"), INVALID_UPDATES, ids=[update[0] for update in INVALID_UPDATES]
)
def test_transition_rules_refuse_updates(
    custom: client.CustomObjectsApi,
    validation_namespace: str,
    why: str,
    old: dict[str, Any],
    new: dict[str, Any],
    says: str,
) -> None:
    name = "update-" + why.replace(" ", "-")
    stored = _create(custom, validation_namespace, _manifest(name, old))
    # A full replace (kubectl replace / apply's PUT) with the stored resourceVersion.
    replacement = _manifest(name, new)
    replacement["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(
            api.GROUP, api.VERSION, validation_namespace, api.PLURAL, name, replacement
        )
    message, causes = _refusal(caught.value)
    field = says.split()[0]  # "spec.pattern is immutable" -> "spec.pattern"
    assert field in [cause.get("field") for cause in causes], causes
    assert says in message
    # A merge patch (kubectl patch / edit) is refused the same way.
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, validation_namespace, api.PLURAL, name, {"spec": new}
        )
    assert says in _refusal(caught.value)[0]
    again = custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, validation_namespace, api.PLURAL, name
    )
    assert again["spec"]["pattern"] == old["pattern"]
    assert again.get("spec", {}).get("storage") == stored["spec"].get("storage")


def test_changing_the_pattern_is_refused(
    custom: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """Ephemeral -> LongRunning with an otherwise valid spec: only the transition rule fires."""
    stored = _create(custom, validation_namespace, _manifest("repattern", VALID_SPECS["Ephemeral"]))
    changed = {**stored, "spec": {**stored["spec"], "pattern": "LongRunning"}}
    for key in ("retries", "prompt"):
        changed["spec"].pop(key, None)
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(
            api.GROUP, api.VERSION, validation_namespace, api.PLURAL, "repattern", changed
        )
    message, causes = _refusal(caught.value)
    assert [(c.get("field"), c.get("reason")) for c in causes] == [
        ("spec.pattern", "FieldValueInvalid")
    ], causes
    assert "spec.pattern is immutable: delete the session and create a new one" in message


def test_scheduling_as_pods_write_it_is_accepted(
    custom: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """Every operator and effect, an empty key with Exists, the longest keys and values,
    and the bounds themselves: accepted, and stored as written (operator defaulted)."""
    longest_key = "p" * 253 + "/" + "n" * 63
    tolerations: list[dict[str, Any]] = [
        {"operator": "Exists"},
        {"key": "", "operator": "Exists", "effect": ""},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "agents", "effect": "PreferNoSchedule"},
        {"key": longest_key, "value": "v" * 63, "effect": "NoExecute", "tolerationSeconds": 0},
    ]
    tolerations += [{"key": f"k{i}", "operator": "Exists"} for i in range(32 - len(tolerations))]
    selector = {longest_key: "v" * 63, "empty": ""} | {f"k{i}": "v" for i in range(30)}
    spec = {**LONG, "scheduling": {"nodeSelector": selector, "tolerations": tolerations}}
    api.AgentSessionSpec.model_validate(spec)  # the models agree
    created = _create(custom, validation_namespace, _manifest("placed", spec))
    stored = created["spec"]["scheduling"]
    assert stored["nodeSelector"] == selector
    assert stored["tolerations"][3] == {**tolerations[3], "operator": "Equal"}
    assert stored["tolerations"][4]["tolerationSeconds"] == 0


def test_mutable_fields_can_change(
    custom: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """The transition rules refuse only what they should: limits and prompts may change."""
    _create(custom, validation_namespace, _manifest("mutable", VALID_SPECS["Hybrid"]))
    patch = {
        "spec": {
            "maxTurns": 7,
            "resources": {"memory": "2Gi"},
            "idleTimeout": "1h",
            "scheduling": {"nodeSelector": {"pool": "agents"}},
        }
    }
    patched = custom.patch_namespaced_custom_object(
        api.GROUP, api.VERSION, validation_namespace, api.PLURAL, "mutable", patch
    )
    assert patched["spec"]["maxTurns"] == 7
    assert patched["spec"]["resources"]["memory"] == "2Gi"
    assert patched["spec"]["idleTimeout"] == "1h"
    assert patched["spec"]["scheduling"] == {"nodeSelector": {"pool": "agents"}}
    assert patched["metadata"]["generation"] == 2


@pytest.mark.parametrize("path", SESSION_EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted_on_dry_run(
    custom: client.CustomObjectsApi, validation_namespace: str, path: Any
) -> None:
    body = load_manifest(path)
    created = _create(custom, validation_namespace, body, dry_run="All")
    assert created["spec"]["pattern"] == body["spec"]["pattern"]
    assert created["metadata"]["uid"]  # a dry run fills in what a real create would


def _condition(reason: str, type_: str = "Ready") -> dict[str, Any]:
    return {
        "type": type_,
        "status": "False",
        "reason": reason,
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


BAD_CONDITIONS = [
    ("empty reason", _condition(""), "status.conditions[0].reason", "at least 1 chars"),
    (
        "reason with spaces",
        _condition("not ready yet"),
        "status.conditions[0].reason",
        'Invalid value: "not ready yet"',
    ),
    (
        "reason starting with a digit",
        _condition("3Restarts"),
        "status.conditions[0].reason",
        'Invalid value: "3Restarts"',
    ),
    (
        "type with spaces",
        _condition("Fine", type_="Pod Ready"),
        "status.conditions[0].type",
        'Invalid value: "Pod Ready"',
    ),
]


@pytest.mark.parametrize(
    ("why", "condition", "field", "says"), BAD_CONDITIONS, ids=[c[0] for c in BAD_CONDITIONS]
)
def test_conditions_are_refused_unless_kep_1623(
    custom: client.CustomObjectsApi,
    validation_namespace: str,
    why: str,
    condition: dict[str, Any],
    field: str,
    says: str,
) -> None:
    name = "cond-" + uuid.uuid4().hex[:6]
    _create(custom, validation_namespace, _manifest(name, LONG))
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            validation_namespace,
            api.PLURAL,
            name,
            {"status": {"conditions": [condition]}},
        )
    _, causes = _refusal(caught.value)
    named = [c.get("message", "") for c in causes if c.get("field") == field]
    assert any(says in m for m in named), (why, causes)
    # The operator's own reasons pass.
    for reason in ("CrashLooping", "SpecTooLarge", "NoActivityUrl", "SecretNotFound"):
        custom.patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            validation_namespace,
            api.PLURAL,
            name,
            {"status": {"conditions": [_condition(reason)]}},
        )


def test_kubectl_get_shows_ready_and_its_reason(
    api_client: client.ApiClient, custom: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """The printer columns, as the API server renders them for `kubectl get` (a Table)."""
    _create(custom, validation_namespace, _manifest("columns", LONG))
    custom.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        validation_namespace,
        api.PLURAL,
        "columns",
        {
            "status": {
                "phase": "CrashLooping",
                "conditions": [_condition("CrashLooping")],
                "nextDurableWakeupTime": "2027-01-01T09:07:00Z",
                "totalCostUsd": 0.25,
                "modelUsage": {"requests": 3, "costUsd": 1.5},
            }
        },
    )
    path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{validation_namespace}/{api.PLURAL}/columns"
    method, url, headers, body, _ = api_client.param_serialize(
        "GET",
        path,
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    raw = api_client.call_api(method, url, headers, body)
    raw.read()
    response = json.loads(raw.data)
    names = [column["name"] for column in response["columnDefinitions"]]
    assert names[:5] == ["Name", "Pattern", "Phase", "Ready", "Reason"]
    row = dict(zip(names, response["rows"][0]["cells"], strict=True))
    assert (row["Phase"], row["Ready"], row["Reason"]) == ("CrashLooping", "False", "CrashLooping")
    # A time to come, as written (a date column would show it as <invalid>).
    assert row["Next Durable Task"] == "2027-01-01T09:07:00Z"
    # The SDK's estimate and the gateway's metered cost, each in its own column.
    assert (row["Cost"], row["Metered Cost"]) == (0.25, 1.5)
