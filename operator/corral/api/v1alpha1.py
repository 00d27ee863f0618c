"""The AgentSession API (`corral.dev/v1alpha1`): the single description of spec and status.

The CRD in `crds/` is generated from these models (`corral crd`), so every field's
description, default, bound and CEL rule lives here and nowhere else.
Field names are snake_case in Python and camelCase on the wire (Kubernetes convention).

Each CEL rule carries the same rule in Python where one object suffices to decide it, so a
spec the models accept is a spec the API server accepts (examples and tests rely on it).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from corral.api.units import DURATION_PATTERN, QUANTITY_PATTERN, parse_duration, parse_quantity

GROUP = "corral.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentSession"
PLURAL = "agentsessions"
SINGULAR = "agentsession"
SHORT_NAMES = ["ags"]
CATEGORIES = ["corral"]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Secret data key as the API server checks a pod's secretKeyRef.key (IsConfigMapKey):
# these characters, and not `.`, `..` or anything starting with `..`. Fix: the pattern was
# `^[-._a-zA-Z0-9]+$`, so a session with key `.` was accepted and its pod then refused
# (found by the server-side dry run of rendered pods). RE2 has no lookahead, hence the form.
SECRET_KEY_PATTERN = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
# Printable ASCII without spaces, not `\S`: Go's `\S` (the API server) takes Unicode
# whitespace, a vertical tab or a NUL that Python's and Rust's (the models) refuse, so such
# a session was stored but never read by the operator, and never got a status (found by
# tests/chaos/test_chaos_bad_input.py). A byte range means the same to every engine.
NO_SPACE_ASCII = "[!-~]+"
URL_PATTERN = rf"^https?://{NO_SPACE_ASCII}$"
# An MCP server's URL: no `#` and no `@`. Each reads differently to the URL parsers that
# judge it (the admission policy's Go parser, the egress proxy's Python one, the CLI's
# Node one): `https://evil.com#.example.com` passed a `*.example.com` guardrail and opened
# evil.com. A fragment means nothing to a server, and credentials belong in headers.
MCP_URL_PATTERN = r'^https?://[!"$-?A-~]+$'
# spec.network.allowedDomains: `*`, a name or `*.` and a name, then an optional `:port`
# (same shape as corral.gateway.egress_policy.DOMAIN_RULE; the port's range is a CEL rule).
DOMAIN_PATTERN = (
    r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)"
    r"(:[0-9]{1,5})?$"
)

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
ToolName = Annotated[str, Field(min_length=1, max_length=256)]
Domain = Annotated[str, Field(pattern=DOMAIN_PATTERN, max_length=259)]

# What `has(x)` means in CEL for a field the models keep as None when it is absent.
Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Rule:
    """One `x-kubernetes-validations` entry, and the same rule in Python when it has one."""

    rule: str
    message: str
    field_path: str | None = None
    # FieldValueRequired, FieldValueForbidden, FieldValueInvalid or FieldValueDuplicate.
    reason: str | None = None
    # None for transition rules (they compare with the stored object) and server-only rules.
    check: Check | None = field(default=None, compare=False)

    def to_openapi(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry


def cel(
    rule: str,
    message: str,
    field_path: str | None = None,
    *,
    reason: str | None = None,
    check: Check | None = None,
) -> Rule:
    """One CEL rule; messages name the field and the fix."""
    return Rule(rule, message, field_path, reason, check)


def list_map(*keys: str) -> JsonDict:
    """Schema marker: items are objects keyed by `keys` (the API server rejects duplicates)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def list_set() -> JsonDict:
    """Schema marker: items are unique scalars (the API server rejects duplicates)."""
    return {"x-kubernetes-list-type": "set"}


def _cel_schema_extra(schema: JsonDict, cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_openapi() for rule in rules]


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
        json_schema_extra=_cel_schema_extra,
    )
    # CEL rules for the object's schema; read by the CRD generator, checked by the validator.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        _check_unique_items(self)
        for rule in self.cel_rules:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self


@functools.cache
def _unique_lists(cls: type[BaseModel]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(field, name on the wire, map keys) of each list of `cls` that must not repeat items:
    read once per model class, not on every validation."""
    found = []
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("x-kubernetes-list-type") not in ("set", "map"):
            continue
        raw_keys = extra.get("x-kubernetes-list-map-keys")
        keys = tuple(str(key) for key in raw_keys) if isinstance(raw_keys, list) else ()
        found.append((name, info.alias or name, keys))
    return tuple(found)


@functools.cache
def _fields_by_alias(cls: type[BaseModel]) -> dict[str, str]:
    return {info.alias or name: name for name, info in cls.model_fields.items()}


def _check_unique_items(model: BaseModel) -> None:
    """What `x-kubernetes-list-type: set|map` makes the API server enforce."""
    for name, shown_name, keys in _unique_lists(type(model)):
        items = getattr(model, name)
        if not items:
            continue
        seen: set[Any] = set()
        for item in items:
            if keys:
                item_type: type[BaseModel] = type(item)
                fields = _fields_by_alias(item_type)
                identity = tuple(getattr(item, fields[k]) for k in keys)
            else:
                identity = item
            if identity in seen:
                shown = (
                    ", ".join(f"{k}={v!r}" for k, v in zip(keys, identity, strict=True))
                    if keys
                    else repr(item)
                )
                raise ValueError(f"{shown_name} must not repeat {shown}")
            seen.add(identity)


class Pattern(StrEnum):
    EPHEMERAL = "Ephemeral"
    LONG_RUNNING = "LongRunning"
    HYBRID = "Hybrid"
    SHARED = "Shared"


class PermissionMode(StrEnum):
    DEFAULT = "default"
    ACCEPT_EDITS = "acceptEdits"
    PLAN = "plan"
    BYPASS_PERMISSIONS = "bypassPermissions"


# The Claude CLI alone uses about 230Mi; below this the runner is OOMKilled in a loop.
MIN_MEMORY = "256Mi"
# Smaller claims are rounded up (or refused) by most volume provisioners.
MIN_STORAGE = "1Gi"


def _at_least(text: str, minimum: str) -> bool:
    return parse_quantity(text) >= parse_quantity(minimum)


class Resources(ApiModel):
    """Compute and disk for the session pod; requests equal limits, except the CPU limit
    while the runner starts when the operator's start-up boost applies."""

    cpu: Quantity = Field("1", description="CPU for the pod, e.g. `500m` or `2`.")
    memory: Quantity = Field(
        "1Gi",
        description="Memory limit for the pod, e.g. `1Gi`, at least 256Mi. The Claude CLI has "
        "no heap cap of its own: this limit is the cap (one CLI process uses about 230 MB for "
        "a short turn).",
    )
    disk: Quantity = Field(
        "5Gi",
        description="Ephemeral-storage limit: workspace, home and /tmp of non-Hybrid sessions; "
        "home, /tmp and logs of Hybrid ones (their workspace is on spec.storage).",
    )
    startup_boost: bool | None = Field(
        None,
        description="Whether the pod may start with the operator's start-up CPU limit "
        "(startupCpuLimit, when above `cpu`; lowered in place to `cpu` once the runner is "
        "ready). Unset: as the operator says; false: the pod starts at `cpu`.",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            f"quantity(self.memory).compareTo(quantity('{MIN_MEMORY}')) >= 0",
            f"resources.memory must be at least {MIN_MEMORY}: the Claude CLI alone uses about "
            "230Mi, so a smaller limit would have the runner killed (OOMKilled) again and again",
            ".memory",
            check=lambda s: _at_least(s.memory, MIN_MEMORY),
        ),
        cel(
            "quantity(self.cpu).isGreaterThan(quantity('0'))",
            "resources.cpu must be greater than 0, e.g. 500m",
            ".cpu",
            check=lambda s: parse_quantity(s.cpu) > 0,
        ),
        cel(
            "quantity(self.disk).compareTo(quantity('64Mi')) >= 0",
            "resources.disk must be at least 64Mi",
            ".disk",
            check=lambda s: _at_least(s.disk, "64Mi"),
        ),
    )


class AgentSpec(ApiModel):
    """One SDK process of a Shared session."""

    name: DnsLabel = Field(
        ..., description="Name the agent is addressed by (a DNS label, unique in the session)."
    )
    prompt: str | None = Field(
        None, max_length=8192, description="First message sent to this agent when it starts."
    )
    system_prompt: str | None = Field(
        None, max_length=8192, description="System prompt of this agent; defaults to spec's."
    )
    model: str | None = Field(
        None, max_length=128, description="Model of this agent; defaults to spec.model."
    )


class McpServer(ApiModel):
    """A remote MCP server the agent may call (stdio servers would need code in the image)."""

    name: DnsLabel = Field(..., description="Server name, unique in the session.")
    type: Literal["http", "sse"] = Field(
        "http", description="Transport: `http` (streamable HTTP) or `sse`."
    )
    url: str = Field(
        ...,
        pattern=MCP_URL_PATTERN,
        max_length=2048,
        description="Server URL, without `#` or `@`. Its host and port are allowed through "
        "the egress proxy automatically.",
    )


class PortSpec(ApiModel):
    """A destination port."""

    port: int = Field(..., ge=1, le=65535, description="Destination port.")
    protocol: Literal["TCP", "UDP"] = Field("TCP", description="TCP or UDP.")


_CIDR_SYNTAX = re.compile(r"[0-9A-Fa-f:.]+/(0|[1-9][0-9]{0,2})")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(text: str) -> IPNetwork:
    """A CIDR as the API server's `isCIDR` reads it: host bits allowed, no IPv4-mapped IPv6."""
    if not _CIDR_SYNTAX.fullmatch(text):
        raise ValueError(f"{text!r} is not a CIDR such as 10.0.0.0/8")
    address = ipaddress.ip_address(text.split("/", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{text!r}: IPv4-mapped IPv6 addresses are not allowed")
    return ipaddress.ip_network(text, strict=False)


def _is_cidr(text: str) -> bool:
    try:
        parse_cidr(text)
    except ValueError:
        return False
    return True


class EgressRule(ApiModel):
    """Extra destinations the session may reach, beyond DNS and public HTTPS."""

    cidr: str = Field(
        ...,
        max_length=43,
        description="Destination CIDR, e.g. `10.0.5.0/24` or `203.0.113.7/32`. Link-local "
        "addresses (169.254.0.0/16, fe80::/10, the cloud metadata service) stay blocked.",
    )
    ports: list[PortSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Allowed ports; empty allows every port of the CIDR.",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            "isCIDR(self.cidr)",
            "network.egress[].cidr must be a CIDR such as 10.0.0.0/8 or 203.0.113.7/32",
            ".cidr",
            check=lambda s: _is_cidr(s.cidr),
        ),
        cel(
            "!isCIDR(self.cidr) || !cidr(self.cidr).masked().ip().isLinkLocalUnicast()",
            "network.egress[].cidr must not be link-local (169.254.0.0/16, fe80::/10): "
            "the cloud metadata service lives there",
            ".cidr",
            check=lambda s: (
                not _is_cidr(s.cidr) or not parse_cidr(s.cidr).network_address.is_link_local
            ),
        ),
    )


def _domain_ports_ok(network: Any) -> bool:
    ports = [d.rpartition(":")[2] for d in network.allowed_domains if ":" in d]
    return all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports)


class NetworkSpec(ApiModel):
    """What the session may reach and who may reach it. Applied live."""

    allow_public_https: bool = Field(
        True,
        description="Allow HTTPS (port 443) to every public address. With the gateway's "
        "egress proxy (the chart's default) this is shorthand for allowedDomains `*:443`, "
        "through the proxy, which refuses private, loopback, link-local and metadata "
        "addresses after resolving the name; without it, a NetworkPolicy rule for TCP 443 to "
        "public addresses. Set false to allow only allowedDomains.",
    )
    allowed_domains: list[Domain] = Field(
        default_factory=list,
        max_length=64,
        description="Names the session may reach through the gateway's egress proxy "
        "(HTTPS_PROXY/HTTP_PROXY in the pod): `github.com`, `*.example.com` (any name below "
        "example.com, not example.com itself), `*` (every public name), each with an "
        "optional `:port` (without one: 80 and 443). A name resolving to a private, "
        "loopback, link-local or metadata address is refused unless egress lists its CIDR. "
        "The hosts of mcpServers are allowed automatically. Lower case.",
        json_schema_extra=list_set(),
    )
    egress: list[EgressRule] = Field(
        default_factory=list,
        max_length=32,
        description="Extra allowed destinations by address: reachable directly, and through "
        "the egress proxy for allowed names that resolve into them.",
    )
    ingress_from_namespaces: list[DnsLabel] = Field(
        default_factory=list,
        max_length=32,
        description="Namespaces (besides the operator's) whose pods may reach the runner port.",
        json_schema_extra=list_set(),
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            "!has(self.allowedDomains) || self.allowedDomains.all(d, !d.contains(':') || "
            "int(d.substring(d.indexOf(':') + 1)) >= 1 && "
            "int(d.substring(d.indexOf(':') + 1)) <= 65535)",
            "network.allowedDomains[] ports must be 1-65535, e.g. git.example.com:8443",
            ".allowedDomains",
            check=_domain_ports_ok,
        ),
    )


class StorageSpec(ApiModel):
    """The PersistentVolumeClaim that keeps a Hybrid session's workspace and transcript."""

    size: Quantity = Field("5Gi", description="Requested size of the volume, at least 1Gi.")
    storage_class_name: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="StorageClass; the operator's default, else the cluster default, when unset.",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            f"quantity(self.size).compareTo(quantity('{MIN_STORAGE}')) >= 0",
            f"storage.size must be at least {MIN_STORAGE}, e.g. 5Gi: the volume holds the "
            "workspace, the CLI's state and the transcript, and most provisioners round a "
            f"smaller claim up to {MIN_STORAGE} or refuse it",
            ".size",
            check=lambda s: _at_least(s.size, MIN_STORAGE),
        ),
    )


class CredentialsSpec(ApiModel):
    """Where the Anthropic API key comes from. The key is never copied out of its Secret."""

    secret_name: str = Field(
        ...,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Secret in the session's namespace holding the key.",
    )
    key: str = Field(
        "ANTHROPIC_API_KEY",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description="Key inside the Secret.",
    )
    base_url: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=2048,
        description="Anthropic API base URL, e.g. a gateway or proxy; the operator's default "
        "(the public API unless configured) when unset.",
    )


# A label key or taint key as the API server checks them (IsQualifiedName): an optional DNS
# subdomain prefix and `/`, then a name of at most 63 characters. The prefix's own bound
# (253) is a CEL rule: a regular expression cannot count it.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
QUALIFIED_NAME_MAX = 253 + 1 + 63
# A label value (IsValidLabelValue): empty, or up to 63 characters.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
_QUALIFIED_NAME = re.compile(QUALIFIED_NAME_PATTERN)


def is_qualified_name(text: str) -> bool:
    """A label or taint key the API server takes (IsQualifiedName)."""
    fits = len(text) <= QUALIFIED_NAME_MAX and _prefix_ok(text)
    return fits and _QUALIFIED_NAME.fullmatch(text) is not None


def _prefix_ok(text: str) -> bool:
    return len(text.rpartition("/")[0]) <= 253


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cel_qualified_name(var: str) -> str:
    """CEL: `var` (a string) is a qualified name."""
    pattern = _cel_string(QUALIFIED_NAME_PATTERN)
    return (
        f"size({var}) <= {QUALIFIED_NAME_MAX} && {var}.matches({pattern})"
        f" && (!{var}.contains('/') || {var}.lastIndexOf('/') <= 253)"
    )


class Toleration(ApiModel):
    """A core/v1 Toleration: the pod may run on nodes with a matching taint."""

    # Also the operator configuration's `tolerations`: one model, one set of rules.

    key: str | None = Field(
        None,
        pattern=rf"^({QUALIFIED_NAME_PATTERN[1:-1]})?$",
        max_length=QUALIFIED_NAME_MAX,
        description="Taint key, e.g. `nvidia.com/gpu`. Empty with operator Exists: every taint.",
    )
    operator: Literal["Equal", "Exists"] = Field(
        "Equal",
        description="`Equal`: the taint's value equals `value`; `Exists`: any value.",
    )
    value: LabelValue | None = Field(
        None, description="Taint value for operator Equal; empty with Exists."
    )
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None,
        description="Taint effect tolerated: NoSchedule, PreferNoSchedule or NoExecute; "
        "empty: all of them.",
    )
    toleration_seconds: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="With effect NoExecute only: how long the pod stays on a node after the "
        "taint appears (unset: for ever).",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            "!has(self.key) || !self.key.contains('/') || self.key.lastIndexOf('/') <= 253",
            "tolerations[].key: the prefix before '/' must be at most 253 characters",
            ".key",
            check=lambda s: _prefix_ok(s.key or ""),
        ),
        cel(
            "self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
            "tolerations[].value must be empty when operator is Exists (it matches any "
            "value): remove value, or use operator Equal",
            ".value",
            reason="FieldValueForbidden",
            check=lambda s: s.operator != "Exists" or not s.value,
        ),
        cel(
            "self.operator != 'Equal' || (has(self.key) && size(self.key) > 0)",
            "tolerations[].key is required when operator is Equal (the default): set key, "
            "or use operator Exists",
            ".key",
            reason="FieldValueRequired",
            check=lambda s: s.operator != "Equal" or bool(s.key),
        ),
        cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerations[].tolerationSeconds is only allowed when effect is NoExecute: "
            "remove it, or set effect: NoExecute",
            ".tolerationSeconds",
            reason="FieldValueForbidden",
            check=lambda s: s.toleration_seconds is None or s.effect == "NoExecute",
        ),
    )

    def identity(self) -> tuple[str, str, str, str, int | None]:
        """What the API server reads: empty and absent are the same."""
        return (
            self.key or "",
            self.operator,
            self.value or "",
            self.effect or "",
            self.toleration_seconds,
        )


MAX_NODE_SELECTOR = 32
MAX_TOLERATIONS = 32


class Scheduling(ApiModel):
    """Where the session's pod may run, on top of the operator's own placement."""

    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_NODE_SELECTOR,
        description="Node labels the pod's node must have, e.g. `{pool: agents}`. Merged "
        "with the operator's nodeSelector; on a key both set, the operator's value wins.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description="Taints the pod tolerates, added to the operator's tolerations.",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            f"!has(self.nodeSelector) || self.nodeSelector.all(k, {_cel_qualified_name('k')})",
            "scheduling.nodeSelector keys must be label keys: an optional DNS-name prefix and "
            "'/', then at most 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit, e.g. example.com/pool",
            ".nodeSelector",
            check=lambda s: all(is_qualified_name(k) for k in s.node_selector),
        ),
    )


def _only_for(pattern: Pattern, spec_field: str, wire: str) -> Rule:
    """`spec.<wire>` may be set only for `pattern`."""
    return cel(
        f"self.pattern == '{pattern.value}' || !has(self.{wire})",
        f"spec.{wire} is only allowed when spec.pattern is {pattern.value}",
        f".{wire}",
        reason="FieldValueForbidden",
        check=lambda s: s.pattern == pattern or getattr(s, spec_field) is None,
    )


def _duration_at_least(value: str | None, least: timedelta) -> bool:
    if value is None:
        return True
    try:
        return parse_duration(value) >= least
    except ValueError:  # beyond Go's longest duration: duration() fails on the server too
        return False


class FinishedCleanup(StrEnum):
    """What `ttlSecondsAfterFinished` deletes."""

    SESSION = "Session"
    CHILDREN = "Children"


class AgentSessionSpec(ApiModel):
    """Desired state of an AgentSession. The operator never writes it."""

    pattern: Pattern = Field(
        ...,
        description="Hosting pattern: Ephemeral (one task, then the pod is gone), LongRunning "
        "(one pod kept alive), Hybrid (scaled to zero after idleTimeout, woken with its "
        "history), Shared (several agents in one container). Immutable.",
    )
    prompt: str | None = Field(
        None,
        max_length=32768,
        description="The task. Required for Ephemeral; for the others, the first message.",
    )
    agents: list[AgentSpec] | None = Field(
        None,
        min_length=2,
        max_length=16,
        description="The agents of a Shared session (at least two, unique names). Adding or "
        "removing an agent restarts the pod.",
        json_schema_extra=list_map("name"),
    )
    model: str | None = Field(
        None, max_length=128, description="Claude model; the operator's default when unset."
    )
    system_prompt: str | None = Field(None, max_length=32768, description="System prompt.")
    max_turns: int = Field(
        50, ge=1, le=10_000, description="Upper bound on turns per run. Always capped."
    )
    max_budget_usd: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Upper bound on token cost, in US dollars: per run in the SDK, and for "
        "the session's whole metered cost (status.modelUsage.costUsd) at the gateway's "
        "model proxy, which refuses model calls beyond it.",
    )
    permission_mode: PermissionMode = Field(
        PermissionMode.DEFAULT,
        description="Claude Code permission mode. The pod is the sandbox; `bypassPermissions` "
        "lets every tool run, `default` allows only spec.allowedTools.",
    )
    allowed_tools: list[ToolName] = Field(
        default_factory=list,
        max_length=64,
        description="Tools the agent may use without asking, e.g. `Bash`, `Read`, `Write`.",
        json_schema_extra=list_set(),
    )
    disallowed_tools: list[ToolName] = Field(
        default_factory=list,
        max_length=64,
        description="Tools the agent may never use.",
        json_schema_extra=list_set(),
    )
    mcp_servers: list[McpServer] = Field(
        default_factory=list,
        max_length=16,
        description="Remote MCP servers.",
        json_schema_extra=list_map("name"),
    )
    image: str | None = Field(
        None,
        pattern=rf"^{NO_SPACE_ASCII}$",
        max_length=512,
        description="Runner image; the operator's default when unset. Changing it restarts "
        "the pod.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="CPU, memory and disk limits of the pod. Changing them restarts the pod.",
        json_schema_extra={"default": {}},
    )
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="Egress allowlist and allowed callers.",
        json_schema_extra={"default": {}},
    )
    idle_timeout: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="Hybrid only: inactivity after which the pod is stopped (the volume stays), "
        "e.g. `15m`. The operator's default (15m) when unset.",
    )
    background_task_timeout: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="Hybrid only: while background tasks the agent started (a build, a test "
        "run) are running, or wakeups it scheduled have not fired, the session is stopped "
        "after this long without other activity instead of idleTimeout (whichever is "
        "longer); stopping the pod ends the tasks and drops the wakeups. The operator's "
        "default (1h) when unset.",
    )
    client_idle_timeout: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="Hybrid only: a client connected to the session (a WebSocket) keeps it "
        "awake for this long after its last message, then idleTimeout runs as if it had "
        "left (its connection ends with the pod). Unset: for as long as it stays connected.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="Ephemeral only: clean up this long after the run finished; what goes "
        "is spec.cleanupAfterFinished.",
    )
    cleanup_after_finished: FinishedCleanup | None = Field(
        None,
        description="Ephemeral only, with ttlSecondsAfterFinished: what the TTL deletes. "
        "`Session` (the default): the AgentSession, and its children with it. `Children`: "
        "only its Service and NetworkPolicy (its pod is already gone); the session and its "
        "status stay. Use `Children` under a GitOps tool, which would re-create a deleted "
        "session and so run (and pay for) the prompt again.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=31_536_000,
        description="Ephemeral only: fail a run (one pod) that takes longer than this; the "
        "operator's default when unset.",
    )
    retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Ephemeral only: new pods tried after a failed run (0: fail at once).",
    )
    storage: StorageSpec | None = Field(
        None,
        description="Hybrid only: the volume that keeps workspace and transcript. Immutable.",
    )
    credentials: CredentialsSpec | None = Field(
        None,
        description="Secret holding the Anthropic API key; the operator's default when unset. "
        "Changing it restarts the pod.",
    )
    suspend: bool = Field(
        False,
        description="Stop the pod and keep the session (and a Hybrid session's volume).",
    )
    scheduling: Scheduling | None = Field(
        None,
        description="Where the pod may run: a nodeSelector and tolerations added to the "
        "operator's (on a nodeSelector key both set, the operator's value wins). Changing it "
        "replaces the pod.",
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            "self.pattern != 'Ephemeral' || (has(self.prompt) && size(self.prompt) > 0)",
            "spec.prompt is required when spec.pattern is Ephemeral: it is the task to run",
            ".prompt",
            reason="FieldValueRequired",
            check=lambda s: s.pattern != Pattern.EPHEMERAL or bool(s.prompt),
        ),
        _only_for(Pattern.SHARED, "agents", "agents"),
        cel(
            "self.pattern != 'Shared' || has(self.agents)",
            "spec.agents is required when spec.pattern is Shared (at least two agents)",
            ".agents",
            reason="FieldValueRequired",
            check=lambda s: s.pattern != Pattern.SHARED or s.agents is not None,
        ),
        _only_for(Pattern.HYBRID, "idle_timeout", "idleTimeout"),
        _only_for(Pattern.HYBRID, "background_task_timeout", "backgroundTaskTimeout"),
        _only_for(Pattern.HYBRID, "client_idle_timeout", "clientIdleTimeout"),
        _only_for(Pattern.HYBRID, "storage", "storage"),
        _only_for(Pattern.EPHEMERAL, "ttl_seconds_after_finished", "ttlSecondsAfterFinished"),
        _only_for(Pattern.EPHEMERAL, "cleanup_after_finished", "cleanupAfterFinished"),
        cel(
            "!has(self.cleanupAfterFinished) || has(self.ttlSecondsAfterFinished)",
            "spec.cleanupAfterFinished needs spec.ttlSecondsAfterFinished: it says what the "
            "TTL deletes",
            ".cleanupAfterFinished",
            reason="FieldValueRequired",
            check=lambda s: (
                s.cleanup_after_finished is None or s.ttl_seconds_after_finished is not None
            ),
        ),
        _only_for(Pattern.EPHEMERAL, "active_deadline_seconds", "activeDeadlineSeconds"),
        cel(
            "self.pattern == 'Ephemeral' || self.retries == 0",
            "spec.retries is only allowed when spec.pattern is Ephemeral",
            ".retries",
            reason="FieldValueForbidden",
            check=lambda s: s.pattern == Pattern.EPHEMERAL or s.retries == 0,
        ),
        cel(
            "!has(self.idleTimeout) || duration(self.idleTimeout) >= duration('1s')",
            "spec.idleTimeout must be at least 1s, e.g. 15m",
            ".idleTimeout",
            check=lambda s: _duration_at_least(s.idle_timeout, timedelta(seconds=1)),
        ),
        cel(
            "!has(self.clientIdleTimeout) || duration(self.clientIdleTimeout) >= duration('1s')",
            "spec.clientIdleTimeout must be at least 1s, e.g. 1h",
            ".clientIdleTimeout",
            check=lambda s: _duration_at_least(s.client_idle_timeout, timedelta(seconds=1)),
        ),
        cel(
            "!has(self.backgroundTaskTimeout) || duration(self.backgroundTaskTimeout) >= "
            "duration('0s')",
            "spec.backgroundTaskTimeout must be a duration Kubernetes can hold, e.g. 1h",
            ".backgroundTaskTimeout",
            check=lambda s: _duration_at_least(s.background_task_timeout, timedelta(0)),
        ),
        # Transition rules: the API server compares with the stored object.
        cel(
            "self.pattern == oldSelf.pattern",
            "spec.pattern is immutable: delete the session and create a new one",
            ".pattern",
        ),
        cel(
            "has(self.storage) == has(oldSelf.storage)"
            " && (!has(self.storage) || self.storage == oldSelf.storage)",
            "spec.storage is immutable: the volume is created once",
            ".storage",
        ),
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# metav1.Condition's own validation (KEP-1623).
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(ApiModel):
    """metav1.Condition (KEP-1623)."""

    type: str = Field(
        ...,
        pattern=CONDITION_TYPE_PATTERN,
        max_length=316,
        description="Condition type in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="spec generation the condition was computed from."
    )
    last_transition_time: str = Field(
        ...,
        description="When status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    reason: str = Field(
        ...,
        pattern=CONDITION_REASON_PATTERN,
        min_length=1,
        max_length=1024,
        description="Why the condition is what it is, in CamelCase, e.g. CrashLooping.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    # The pod exists but its runner keeps exiting (restarted again and again in place).
    CRASH_LOOPING = "CrashLooping"
    IDLE = "Idle"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# Bounds of what a runner may report (its result, its activity): far beyond any real
# session, far below what would overflow the API server's int64 or make a float non-finite
# in a status patch (which the API server refuses, so the patch would fail on every retry).
MAX_TURNS = 1_000_000_000
MAX_COST_USD = 1_000_000.0
MAX_TOKENS = 10**15


def clamp_turns(value: int) -> int:
    """A turn count the status schema takes (a runner clamps what it reports)."""
    return min(max(value, 0), MAX_TURNS)


def clamp_tokens(value: int) -> int:
    return min(max(value, 0), MAX_TOKENS)


def clamp_cost(value: float) -> float:
    """A cost the status schema takes: finite, non-negative, bounded, to the micro-dollar."""
    return 0.0 if math.isnan(value) else round(min(max(value, 0.0), MAX_COST_USD), 6)


def _tokens(description: str) -> Any:
    return Field(0, ge=0, le=MAX_TOKENS, description=description)


def _turns(description: str) -> Any:
    return Field(0, ge=0, le=MAX_TURNS, description=description)


def _cost(description: str) -> Any:
    return Field(0.0, ge=0, le=MAX_COST_USD, allow_inf_nan=False, description=description)


class Usage(ApiModel):
    """Token usage as the SDK reports it."""

    input_tokens: int = _tokens("Input tokens.")
    output_tokens: int = _tokens("Output tokens.")
    cache_read_input_tokens: int = _tokens("Tokens read from the cache.")
    cache_creation_input_tokens: int = _tokens("Tokens written to the cache.")


class RunResult(ApiModel):
    """Outcome of an Ephemeral run, as the runner reported it."""

    subtype: str = Field(..., max_length=64, description="success, error_max_turns, ...")
    text: str | None = Field(None, max_length=4096, description="The result text, cut to fit.")
    num_turns: int = _turns("Turns taken.")
    total_cost_usd: float = _cost("Token cost reported by the SDK.")
    usage: Usage = Field(default_factory=Usage, description="Token usage.")
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")


class AgentStatus(ApiModel):
    """One agent of a Shared session, as the runner reports it."""

    name: str = Field(..., max_length=63, description="Agent name.")
    state: str = Field("Unknown", max_length=32, description="idle, busy or error.")
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")
    num_turns: int = _turns("Turns taken.")
    total_cost_usd: float = _cost("Token cost.")


class CostStatus(ApiModel):
    """What the session has cost so far."""

    tokens_usd: float = Field(0.0, ge=0, description="Token cost as the SDK reports it.")
    pod_seconds: int = Field(0, ge=0, description="Seconds the session's pods have run.")
    infrastructure_usd: float = Field(
        0.0, ge=0, description="pod seconds times the operator's price per container-hour."
    )


_TIMESTAMP: JsonDict = {"format": "date-time"}


# Spelled as the API's `ephemeral_1h_input_tokens` is ("1h", where camel case would make "1H").
HOUR_CACHE_WRITES = "cacheCreation1hInputTokens"


class MeteredTokens(ApiModel):
    """What the gateway's model proxy counted of model calls."""

    input_tokens: int = Field(0, ge=0, description="Input tokens.")
    output_tokens: int = Field(0, ge=0, description="Output tokens.")
    cache_read_input_tokens: int = Field(0, ge=0, description="Tokens read from the cache.")
    cache_creation_input_tokens: int = Field(0, ge=0, description="Tokens written to the cache.")
    cache_creation_1h_input_tokens: int = Field(
        0,
        ge=0,
        alias=HOUR_CACHE_WRITES,
        description="Of those, the tokens kept an hour (charged higher).",
    )
    web_search_requests: int = Field(
        0, ge=0, description="Web searches the model ran (server tool use), charged apart."
    )


class ModelTokens(MeteredTokens):
    """Tokens and cost of one model (its price-table name, or `other`)."""

    model: str = Field(..., max_length=128, description="Model (price-table prefix).")
    cost_usd: float = Field(0.0, ge=0, description="Cost at the configured prices.")


class ModelUsageStatus(MeteredTokens):
    """Model calls as the gateway's model proxy metered them (outside the sandbox)."""

    requests: int = Field(0, ge=0, description="Model calls forwarded.")
    cost_usd: float = Field(
        0.0,
        ge=0,
        description="Cost at the operator's price table (tokens and web searches): the "
        "session's cost.",
    )
    models: list[ModelTokens] = Field(
        default_factory=list,
        max_length=64,
        description="The same, per model.",
        json_schema_extra=list_map("model"),
    )
    update_time: str | None = Field(
        None, description="When the gateway last wrote this.", json_schema_extra=_TIMESTAMP
    )


class RunnerInfo(ApiModel):
    """Versions inside the pod."""

    sdk_version: str | None = Field(None, max_length=64, description="claude-agent-sdk version.")
    cli_version: str | None = Field(None, max_length=64, description="Claude Code CLI version.")


class AgentSessionStatus(ApiModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(None, description="Summary of where the session is.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, PodReady, CredentialsReady, SpecAccepted, ActivityReports, Idle, "
        "Complete, Failed, BudgetExceeded.",
        json_schema_extra=list_map("type"),
    )
    observed_generation: int | None = Field(
        None, ge=0, description="Last spec generation acted on."
    )
    pod_name: str | None = Field(None, max_length=253, description="Current pod, if any.")
    service_name: str | None = Field(None, max_length=253, description="Runner Service.")
    pvc_name: str | None = Field(None, max_length=253, description="Hybrid volume.")
    endpoint: str | None = Field(
        None, max_length=1024, description="Runner URL inside the cluster."
    )
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")
    num_turns: int | None = Field(None, ge=0, description="Turns taken so far.")
    total_cost_usd: float | None = Field(
        None, ge=0, description="Token cost so far (SDK estimate)."
    )
    result: RunResult | None = Field(None, description="Ephemeral outcome.")
    start_time: str | None = Field(
        None, description="When the current pod started.", json_schema_extra=_TIMESTAMP
    )
    completion_time: str | None = Field(
        None, description="When an Ephemeral run finished.", json_schema_extra=_TIMESTAMP
    )
    last_activity_time: str | None = Field(
        None, description="Last turn or message seen.", json_schema_extra=_TIMESTAMP
    )
    idle_since: str | None = Field(
        None, description="When a Hybrid session was scaled to zero.", json_schema_extra=_TIMESTAMP
    )
    wake_count: int | None = Field(None, ge=0, description="Wakes of a Hybrid session.")
    observed_wake: str | None = Field(
        None, max_length=256, description="Last corral.dev/wake annotation value acted on."
    )
    background_tasks: int | None = Field(
        None,
        ge=0,
        description="Background tasks the agents started that are still running, as the "
        "runner last reported (Hybrid: spec.backgroundTaskTimeout applies while above 0).",
    )
    scheduled_wakeups: int | None = Field(
        None,
        ge=0,
        description="Wakeups the agents scheduled in their CLIs (ScheduleWakeup, CronCreate) "
        "that have not fired, as the runner last reported; they are lost when the pod stops "
        "(Hybrid: spec.backgroundTaskTimeout applies while above 0).",
    )
    next_durable_wakeup_time: str | None = Field(
        None,
        description="When the agents' durable tasks (CronCreate with durable: true, kept on "
        "the session's volume) fire next, as the runner last reported; a sleeping Hybrid "
        "session is woken ahead of it, since only a running CLI runs them.",
        json_schema_extra=_TIMESTAMP,
    )
    restarts: int | None = Field(None, ge=0, description="Pods recreated after being lost.")
    attempts: int | None = Field(None, ge=0, description="Ephemeral runs tried.")
    agents: list[AgentStatus] | None = Field(
        None, description="Shared: each agent's state.", json_schema_extra=list_map("name")
    )
    runner: RunnerInfo | None = Field(None, description="Versions inside the pod.")
    cost: CostStatus | None = Field(None, description="Token and infrastructure cost.")
    model_usage: ModelUsageStatus | None = Field(
        None,
        description="Tokens and cost metered by the gateway's model proxy (written by the "
        "gateway); cost.tokensUsd and totalCostUsd stay the SDK's own estimate.",
    )


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the operator reads; the rest passes through."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AgentSession(BaseModel):
    """A whole AgentSession object, as read from the API server or a manifest."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: AgentSessionSpec
    status: AgentSessionStatus = Field(default_factory=AgentSessionStatus)

    @classmethod
    def from_manifest(cls, body: dict[str, Any]) -> AgentSession:
        return cls.model_validate(body)
