"""Hypothesis strategies for valid AgentSessions, bounded by the API models' own schema.

Everything drawn here is accepted by the pydantic models, which repeat the CRD's CEL rules,
so the same values must also pass a server-side dry run (the integration suite reuses
`sessions()` and `session_manifest()`). Texts stay short to keep runs fast; the length
bounds themselves are tested separately.

Also here: `INVALID_SPECS` and `INVALID_UPDATES`, specs and updates the API must refuse,
with a fragment of the message that says why; and the manifests in examples/.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from corral.api import v1alpha1 as api
from corral.api.crd import openapi_schema
from corral.api.units import parse_duration

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

SHORT_TEXT = 120
PROMPT_ALPHABET = st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t")


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return openapi_schema(model)


def bound(model: type[BaseModel], field: str, keyword: str) -> Any:
    """A bound (maxLength, maximum, ...) of `model.field` as the CRD states it."""
    prop = _schema(model)["properties"][to_camel(field)]
    return prop.get(keyword, prop.get("items", {}).get(keyword))


def model(cls: type[M], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[M]:
    """`cls` built from the strategies in `fields` (Python field names, nothing inferred)."""
    return st.fixed_dictionaries(fields).map(lambda values: cls(**values))


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


def text(model: type[BaseModel], field: str, min_size: int = 0) -> st.SearchStrategy[str]:
    limit = min(bound(model, field, "maxLength"), SHORT_TEXT)
    return st.text(PROMPT_ALPHABET, min_size=min_size, max_size=limit)


dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
long_dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
# Session names: DNS subdomains, long and dotted ones included (children must cope).
session_names = (
    st.lists(dns_labels | long_dns_labels, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda name: len(name) <= 253)
)
namespaces = dns_labels.filter(lambda name: len(name) <= 63)
urls = st.from_regex(
    r"https?://[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{2,5})?(/[a-z0-9/_-]{0,20})?", fullmatch=True
)
model_names = st.sampled_from(["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"])
images = st.from_regex(
    r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?/[a-z0-9/_-]{1,20}:[a-z0-9._-]{1,10}", fullmatch=True
)
tool_names = st.sampled_from(
    ["Bash", "Read", "Write", "Edit", "Grep", "Glob", "WebFetch", "mcp__issues__search"]
) | st.text(PROMPT_ALPHABET, min_size=1, max_size=40)

cpus = st.one_of(
    st.integers(1, 64_000).map(lambda n: f"{n}m"),
    st.integers(1, 64).map(str),
    st.sampled_from(["0.5", "1.5", "250m"]),
)
memories = st.one_of(
    st.integers(256, 65_536).map(lambda n: f"{n}Mi"),
    st.integers(1, 64).map(lambda n: f"{n}Gi"),
    st.integers(269, 10_000).map(lambda n: f"{n}M"),  # 256Mi is about 268.4M
)
disks = st.integers(64, 100_000).map(lambda n: f"{n}Mi") | st.integers(1, 500).map(
    lambda n: f"{n}Gi"
)
durations = (
    st.lists(
        st.tuples(st.integers(0, 500), st.sampled_from(["ms", "s", "m", "h"])),
        min_size=1,
        max_size=3,
    )
    .map(lambda parts: "".join(f"{n}{unit}" for n, unit in parts))
    .filter(lambda text: parse_duration(text).total_seconds() >= 1)
)


def _cidr_ok(text: str) -> bool:
    try:
        api.EgressRule(cidr=text)
    except ValueError:
        return False
    return True


cidrs = (
    st.one_of(
        st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
        st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
    )
    .flatmap(
        # Canonical networks and, as users write them, addresses with host bits set.
        lambda pair: st.sampled_from(
            [
                str(ipaddress.ip_network(f"{pair[0]}/{pair[1]}", strict=False)),
                f"{pair[0]}/{pair[1]}",
            ]
        )
    )
    .filter(_cidr_ok)
)

port_specs = model(
    api.PortSpec, port=st.integers(1, 65_535), protocol=st.sampled_from(["TCP", "UDP"])
)
egress_rules = model(api.EgressRule, cidr=cidrs, ports=st.lists(port_specs, max_size=4))
domains = st.builds(
    lambda prefix, name, port: f"{prefix}{name}{port}",
    st.sampled_from(["", "*."]),
    namespaces.map(lambda label: f"{label}.example"),
    st.sampled_from(["", ":443", ":8443", ":1", ":65535"]),
) | st.sampled_from(["*", "*:443"])
network_specs = model(
    api.NetworkSpec,
    allow_public_https=st.booleans(),
    allowed_domains=st.lists(domains, max_size=4, unique=True),
    egress=st.lists(egress_rules, max_size=4),
    ingress_from_namespaces=st.lists(namespaces, max_size=4, unique=True),
)
resources = model(api.Resources, cpu=cpus, memory=memories, disk=disks)
mcp_servers = st.lists(
    model(api.McpServer, name=dns_labels, type=st.sampled_from(["http", "sse"]), url=urls),
    max_size=3,
    unique_by=lambda server: server.name,
)
agents = st.lists(
    model(
        api.AgentSpec,
        name=dns_labels,
        prompt=optional(text(api.AgentSpec, "prompt")),
        system_prompt=optional(text(api.AgentSpec, "system_prompt")),
        model=optional(model_names),
    ),
    min_size=bound(api.AgentSessionSpec, "agents", "minItems"),
    max_size=4,
    unique_by=lambda agent: agent.name,
)
credentials = model(
    api.CredentialsSpec,
    secret_name=session_names,
    # Any Secret key the API server takes in a secretKeyRef (not ".", nor "..<anything>").
    key=st.from_regex(r"\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,38}", fullmatch=True),
    base_url=optional(urls),
)
storage = model(
    api.StorageSpec,
    size=st.integers(1, 1000).map(lambda n: f"{n}Gi"),
    storage_class_name=optional(dns_labels),
)

# Label and taint keys as the API server takes them: an optional DNS-name prefix, then a
# name of 1-63 characters (the longest of each included).
label_names = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
label_keys = st.builds(
    lambda prefix, name: f"{prefix}/{name}" if prefix else name,
    st.none() | session_names,
    label_names,
) | st.sampled_from(["type", "kubernetes.io/arch", "nvidia.com/gpu", "a" * 253 + "/" + "b" * 63])
label_values = st.just("") | label_names


@st.composite
def tolerations(draw: st.DrawFn) -> api.Toleration:
    """A toleration the API server takes in a pod: the rules of api.Toleration hold."""
    exists = draw(st.booleans())
    effect = draw(st.sampled_from([None, "", "NoSchedule", "PreferNoSchedule", "NoExecute"]))
    return api.Toleration(
        key=draw(optional(label_keys) if exists else label_keys),
        operator="Exists" if exists else "Equal",
        value=None if exists else draw(optional(label_values)),
        effect=effect,
        toleration_seconds=draw(optional(st.integers(0, 31_536_000)))
        if effect == "NoExecute"
        else None,
    )


schedulings = model(
    api.Scheduling,
    node_selector=st.dictionaries(label_keys, label_values, max_size=4),
    tolerations=st.lists(tolerations(), max_size=4),
)


@st.composite
def specs(draw: st.DrawFn, pattern: api.Pattern | None = None) -> api.AgentSessionSpec:
    """A valid spec of `pattern` (any pattern when None), with pattern-specific fields."""
    chosen = pattern or draw(st.sampled_from(list(api.Pattern)))
    spec_text = lambda field, min_size=0: text(api.AgentSessionSpec, field, min_size)  # noqa: E731
    fields: dict[str, Any] = {
        "pattern": chosen,
        "model": draw(optional(model_names)),
        "system_prompt": draw(optional(spec_text("system_prompt"))),
        "max_turns": draw(st.integers(1, bound(api.AgentSessionSpec, "max_turns", "maximum"))),
        "max_budget_usd": draw(
            optional(st.floats(min_value=0, max_value=10_000, exclude_min=True))
        ),
        "permission_mode": draw(st.sampled_from(list(api.PermissionMode))),
        "allowed_tools": draw(st.lists(tool_names, max_size=5, unique=True)),
        "disallowed_tools": draw(st.lists(tool_names, max_size=5, unique=True)),
        "mcp_servers": draw(mcp_servers),
        "image": draw(optional(images)),
        "resources": draw(resources),
        "network": draw(network_specs),
        "credentials": draw(optional(credentials)),
        "suspend": draw(st.booleans()),
        "scheduling": draw(optional(schedulings)),
    }
    if chosen == api.Pattern.EPHEMERAL:
        fields["prompt"] = draw(spec_text("prompt", min_size=1))
        fields["ttl_seconds_after_finished"] = draw(optional(st.integers(0, 31_536_000)))
        if fields["ttl_seconds_after_finished"] is not None:
            fields["cleanup_after_finished"] = draw(optional(st.sampled_from(api.FinishedCleanup)))
        fields["active_deadline_seconds"] = draw(optional(st.integers(1, 31_536_000)))
        fields["retries"] = draw(st.integers(0, 10))
    else:
        fields["prompt"] = draw(optional(spec_text("prompt")))
    if chosen == api.Pattern.SHARED:
        fields["agents"] = draw(agents)
    if chosen == api.Pattern.HYBRID:
        fields["idle_timeout"] = draw(optional(durations))
        fields["background_task_timeout"] = draw(optional(durations))
        fields["storage"] = draw(optional(storage))
    return api.AgentSessionSpec(**fields)


@st.composite
def sessions(draw: st.DrawFn, pattern: api.Pattern | None = None) -> api.AgentSession:
    """A whole AgentSession as read back from the server (name, namespace and uid set)."""
    meta = api.ObjectMeta(
        name=draw(session_names), namespace=draw(namespaces), uid=str(draw(st.uuids()))
    )
    return api.AgentSession(metadata=meta, spec=draw(specs(pattern)))


def session_manifest(session: api.AgentSession) -> dict[str, Any]:
    """The manifest a user would apply: no uid, no status."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": session.metadata.name, "namespace": session.metadata.namespace},
        "spec": session.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


class Invalid(NamedTuple):
    """A spec the models and the API server refuse."""

    why: str
    spec: dict[str, Any]
    # A fragment of the models' error: the CEL message, or pydantic's error type
    # (`string_pattern_mismatch`, ...) when the OpenAPI schema itself refuses the value.
    message: str

    @property
    def cel(self) -> bool:
        """Whether a CEL rule refuses it, so the server's message carries `message` too."""
        return any(self.message in rule.message for rule in _all_rules())


@cache
def _all_rules() -> tuple[api.Rule, ...]:
    models = [m for m in vars(api).values() if isinstance(m, type) and issubclass(m, api.ApiModel)]
    return tuple(rule for model in models for rule in model.cel_rules)


_EXISTS_WITH_VALUE = {"key": "gpu", "operator": "Exists", "value": "yes"}
_SECONDS_NO_SCHEDULE = {"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}

_INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("ephemeral without prompt", {"pattern": "Ephemeral"}, "spec.prompt is required"),
    ("ephemeral empty prompt", {"pattern": "Ephemeral", "prompt": ""}, "spec.prompt is required"),
    (
        "agents outside Shared",
        {"pattern": "LongRunning", "agents": [{"name": "a"}, {"name": "b"}]},
        "spec.agents is only allowed",
    ),
    ("shared without agents", {"pattern": "Shared"}, "spec.agents is required"),
    ("shared with one agent", {"pattern": "Shared", "agents": [{"name": "a"}]}, "too_short"),
    (
        "duplicate agent names",
        {"pattern": "Shared", "agents": [{"name": "a"}, {"name": "a"}]},
        "must not repeat",
    ),
    (
        "idleTimeout outside Hybrid",
        {"pattern": "LongRunning", "idleTimeout": "5m"},
        "spec.idleTimeout is only allowed",
    ),
    ("zero idleTimeout", {"pattern": "Hybrid", "idleTimeout": "0s"}, "at least 1s"),
    (
        "bad idleTimeout",
        {"pattern": "Hybrid", "idleTimeout": "5 minutes"},
        "string_pattern_mismatch",
    ),
    (
        "backgroundTaskTimeout outside Hybrid",
        {"pattern": "LongRunning", "backgroundTaskTimeout": "1h"},
        "spec.backgroundTaskTimeout is only allowed",
    ),
    (
        "backgroundTaskTimeout beyond Go's longest duration",
        {"pattern": "Hybrid", "backgroundTaskTimeout": "9999999h"},
        "spec.backgroundTaskTimeout must be a duration Kubernetes can hold",
    ),
    (
        "clientIdleTimeout outside Hybrid",
        {"pattern": "LongRunning", "clientIdleTimeout": "1h"},
        "spec.clientIdleTimeout is only allowed",
    ),
    ("zero clientIdleTimeout", {"pattern": "Hybrid", "clientIdleTimeout": "0s"}, "at least 1s"),
    (
        "storage outside Hybrid",
        {"pattern": "Shared", "agents": [{"name": "a"}, {"name": "b"}], "storage": {}},
        "spec.storage is only allowed",
    ),
    (
        "ttl outside Ephemeral",
        {"pattern": "LongRunning", "ttlSecondsAfterFinished": 60},
        "spec.ttlSecondsAfterFinished is only allowed",
    ),
    (
        "deadline outside Ephemeral",
        {"pattern": "Hybrid", "activeDeadlineSeconds": 60},
        "spec.activeDeadlineSeconds is only allowed",
    ),
    ("retries outside Ephemeral", {"pattern": "LongRunning", "retries": 2}, "spec.retries"),
    ("too many retries", {"pattern": "Ephemeral", "prompt": "x", "retries": 11}, "less_than_equal"),
    ("unknown pattern", {"pattern": "Batch"}, "type=enum"),
    ("memory too small", {"pattern": "LongRunning", "resources": {"memory": "64Mi"}}, "256Mi"),
    (
        "memory just below what the CLI needs",
        {"pattern": "LongRunning", "resources": {"memory": "255Mi"}},
        "resources.memory must be at least 256Mi",
    ),
    ("zero cpu", {"pattern": "LongRunning", "resources": {"cpu": "0"}}, "greater than 0"),
    ("disk too small", {"pattern": "LongRunning", "resources": {"disk": "1Mi"}}, "64Mi"),
    ("zero storage", {"pattern": "Hybrid", "storage": {"size": "0"}}, "storage.size"),
    (
        "storage below 1Gi",
        {"pattern": "Hybrid", "storage": {"size": "512Mi"}},
        "storage.size must be at least 1Gi",
    ),
    (
        "cleanupAfterFinished outside Ephemeral",
        {"pattern": "LongRunning", "cleanupAfterFinished": "Children"},
        "spec.cleanupAfterFinished is only allowed",
    ),
    (
        "cleanupAfterFinished without a TTL",
        {"pattern": "Ephemeral", "prompt": "x", "cleanupAfterFinished": "Children"},
        "spec.cleanupAfterFinished needs spec.ttlSecondsAfterFinished",
    ),
    (
        "unknown cleanupAfterFinished",
        {
            "pattern": "Ephemeral",
            "prompt": "x",
            "ttlSecondsAfterFinished": 60,
            "cleanupAfterFinished": "Pod",
        },
        "type=enum",
    ),
    (
        "not a quantity",
        {"pattern": "LongRunning", "resources": {"cpu": "two"}},
        "string_pattern_mismatch",
    ),
    (
        "not a CIDR",
        {"pattern": "LongRunning", "network": {"egress": [{"cidr": "10.0.0.0"}]}},
        "must be a CIDR",
    ),
    (
        "metadata address",
        {"pattern": "LongRunning", "network": {"egress": [{"cidr": "169.254.169.254/32"}]}},
        "link-local",
    ),
    (
        "IPv6 link-local",
        {"pattern": "LongRunning", "network": {"egress": [{"cidr": "fe80::1/64"}]}},
        "link-local",
    ),
    (
        "port out of range",
        {
            "pattern": "LongRunning",
            "network": {"egress": [{"cidr": "10.0.0.0/8", "ports": [{"port": 0}]}]},
        },
        "greater_than_equal",
    ),
    (
        "duplicate namespaces",
        {"pattern": "LongRunning", "network": {"ingressFromNamespaces": ["a", "a"]}},
        "must not repeat",
    ),
    (
        "domain with a wildcard in the middle",
        {"pattern": "LongRunning", "network": {"allowedDomains": ["a.*.example.com"]}},
        "string_pattern_mismatch",
    ),
    (
        "domain in upper case",
        {"pattern": "LongRunning", "network": {"allowedDomains": ["GitHub.com"]}},
        "string_pattern_mismatch",
    ),
    (
        "domain port out of range",
        {"pattern": "LongRunning", "network": {"allowedDomains": ["git.example.com:70000"]}},
        "ports must be 1-65535",
    ),
    (
        "duplicate domains",
        {"pattern": "LongRunning", "network": {"allowedDomains": ["a.example", "a.example"]}},
        "must not repeat",
    ),
    (
        "duplicate tools",
        {"pattern": "LongRunning", "allowedTools": ["Bash", "Bash"]},
        "must not repeat",
    ),
    (
        "duplicate MCP servers",
        {
            "pattern": "LongRunning",
            "mcpServers": [
                {"name": "x", "url": "https://a.example"},
                {"name": "x", "url": "https://b.example"},
            ],
        },
        "must not repeat",
    ),
    ("zero maxTurns", {"pattern": "LongRunning", "maxTurns": 0}, "greater_than_equal"),
    ("zero budget", {"pattern": "LongRunning", "maxBudgetUsd": 0}, "type=greater_than,"),
    (
        "bad secret name",
        {"pattern": "LongRunning", "credentials": {"secretName": "Not_A_Name"}},
        "string_pattern_mismatch",
    ),
    ("image with a space", {"pattern": "LongRunning", "image": "a b"}, "string_pattern_mismatch"),
    # Whitespace to Python's `\s` but not to Go's (ASCII only): the API server took these
    # while the operator's models refused them, so the session never got a status (found by
    # tests/chaos/test_chaos_bad_input.py).
    (
        "image with a vertical tab",
        {"pattern": "LongRunning", "image": "a\x0bb"},
        "string_pattern_mismatch",
    ),
    (
        "image with a no-break space",
        {"pattern": "LongRunning", "image": "a\u00a0b"},
        "string_pattern_mismatch",
    ),
    (
        "MCP URL with a line separator",
        {"pattern": "LongRunning", "mcpServers": [{"name": "m", "url": "https://a\u2028b"}]},
        "string_pattern_mismatch",
    ),
    (
        "base URL with a next-line character",
        {"pattern": "LongRunning", "credentials": {"secretName": "k", "baseUrl": "https://a\x85"}},
        "string_pattern_mismatch",
    ),
    (
        "secret key '.'",
        {"pattern": "LongRunning", "credentials": {"secretName": "k", "key": "."}},
        "string_pattern_mismatch",
    ),
    (
        "secret key starting with '..'",
        {"pattern": "LongRunning", "credentials": {"secretName": "k", "key": "..key"}},
        "string_pattern_mismatch",
    ),
    (
        "toleration Exists with a value",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [_EXISTS_WITH_VALUE]}},
        "tolerations[].value must be empty when operator is Exists",
    ),
    (
        "toleration Equal without a key",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [{"value": "gpu"}]}},
        "tolerations[].key is required when operator is Equal",
    ),
    (
        "tolerationSeconds without NoExecute",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [_SECONDS_NO_SCHEDULE]}},
        "tolerations[].tolerationSeconds is only allowed when effect is NoExecute",
    ),
    (
        "toleration key prefix beyond 253 characters",
        {
            "pattern": "LongRunning",
            "scheduling": {"tolerations": [{"key": "a" * 254 + "/b", "operator": "Exists"}]},
        },
        "the prefix before '/' must be at most 253 characters",
    ),
    (
        "toleration key with a space",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [{"key": "a b", "value": "x"}]}},
        "string_pattern_mismatch",
    ),
    (
        "unknown toleration effect",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [{"key": "a", "effect": "No"}]}},
        "literal_error",
    ),
    (
        "toleration operator Lt",
        {"pattern": "LongRunning", "scheduling": {"tolerations": [{"key": "a", "operator": "Lt"}]}},
        "literal_error",
    ),
    (
        "nodeSelector key that is no label key",
        {"pattern": "LongRunning", "scheduling": {"nodeSelector": {"Pool Name": "a"}}},
        "scheduling.nodeSelector keys must be label keys",
    ),
    (
        "nodeSelector key prefix beyond 253 characters",
        {"pattern": "LongRunning", "scheduling": {"nodeSelector": {"a" * 254 + "/b": "x"}}},
        "scheduling.nodeSelector keys must be label keys",
    ),
    (
        "nodeSelector value that is no label value",
        {"pattern": "LongRunning", "scheduling": {"nodeSelector": {"pool": "a b"}}},
        "string_pattern_mismatch",
    ),
    (
        "too many nodeSelector entries",
        {
            "pattern": "LongRunning",
            "scheduling": {"nodeSelector": {f"k{i}": "v" for i in range(33)}},
        },
        "too_long",
    ),
    (
        "too many tolerations",
        {
            "pattern": "LongRunning",
            "scheduling": {
                "tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(33)]
            },
        },
        "too_long",
    ),
]

INVALID_SPECS = [Invalid(*case) for case in _INVALID_SPECS]

# (what is wrong, old spec, new spec, a fragment of the message) -- refused by the server only:
# transition rules compare with the stored object, which the models never see.
INVALID_UPDATES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "pattern change",
        {"pattern": "LongRunning"},
        {"pattern": "Hybrid"},
        "spec.pattern is immutable",
    ),
    (
        "storage change",
        {"pattern": "Hybrid", "storage": {"size": "5Gi"}},
        {"pattern": "Hybrid", "storage": {"size": "10Gi"}},
        "spec.storage is immutable",
    ),
    (
        "storage added",
        {"pattern": "Hybrid"},
        {"pattern": "Hybrid", "storage": {"size": "10Gi"}},
        "spec.storage is immutable",
    ),
]


EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
CREDENTIALS_EXAMPLE = EXAMPLES_DIR / "credentials-secret.yaml"
SESSION_EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.yaml") if p != CREDENTIALS_EXAMPLE)


def load_manifest(path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(body, dict):
        raise ValueError(f"{path} holds no manifest")
    return body
