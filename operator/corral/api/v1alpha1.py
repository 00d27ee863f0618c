"""The AgentSession API (`corral.dev/v1alpha1`): the single description of spec and status.

The CRD in `crds/` is generated from these models (`corral crd`), so every field's
description, default, bound and CEL rule lives here and nowhere else.
Field names are snake_case in Python and camelCase on the wire (Kubernetes convention).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "corral.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentSession"
PLURAL = "agentsessions"
SINGULAR = "agentsession"
SHORT_NAMES = ["ags"]
CATEGORIES = ["corral"]

# Kubernetes resource.Quantity, as the API server's own schema accepts it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Go duration made of whole units, e.g. "90s", "15m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; messages name the field and the fix."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )
    # CEL rules for the object's schema; read by the CRD generator.
    cel_rules: ClassVar[list[dict[str, str]]] = []


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


class Resources(ApiModel):
    """Compute and disk for the session pod; requests equal limits (Guaranteed QoS)."""

    cpu: Quantity = Field("1", description="CPU for the pod, e.g. `500m` or `2`.")
    memory: Quantity = Field(
        "1Gi",
        description="Memory limit for the pod, e.g. `1Gi`. The Claude CLI has no heap cap of "
        "its own: this limit is the cap (one CLI process uses about 230 MB for a short turn).",
    )
    disk: Quantity = Field(
        "5Gi",
        description="Ephemeral-storage limit (workspace, home and /tmp of non-Hybrid sessions).",
    )
    cel_rules: ClassVar[list[dict[str, str]]] = [
        cel(
            "quantity(self.memory).compareTo(quantity('128Mi')) >= 0",
            "resources.memory must be at least 128Mi: the Claude CLI alone needs about 230Mi",
            ".memory",
        ),
        cel(
            "quantity(self.cpu).isGreaterThan(quantity('0'))",
            "resources.cpu must be greater than 0, e.g. 500m",
            ".cpu",
        ),
        cel(
            "quantity(self.disk).compareTo(quantity('64Mi')) >= 0",
            "resources.disk must be at least 64Mi",
            ".disk",
        ),
    ]


class AgentSpec(ApiModel):
    """One SDK process of a Shared session."""

    name: str = Field(
        ...,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Name the agent is addressed by (a DNS label, unique in the session).",
    )
    prompt: str | None = Field(
        None, max_length=8192, description="First message sent to this agent when it starts."
    )
    system_prompt: str | None = Field(
        None, max_length=8192, description="System prompt of this agent."
    )
    model: str | None = Field(
        None, max_length=128, description="Model of this agent; defaults to spec.model."
    )


class McpServer(ApiModel):
    """A remote MCP server the agent may call (stdio servers would need code in the image)."""

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63, description="Server name.")
    type: str = Field(
        "http",
        json_schema_extra={"enum": ["http", "sse"]},
        description="Transport: `http` (streamable HTTP) or `sse`.",
    )
    url: str = Field(
        ...,
        pattern=r"^https?://",
        max_length=2048,
        description="Server URL. Its host must also be allowed by spec.network.egress.",
    )


class PortSpec(ApiModel):
    port: int = Field(..., ge=1, le=65535, description="Destination port.")
    protocol: str = Field(
        "TCP", json_schema_extra={"enum": ["TCP", "UDP"]}, description="TCP or UDP."
    )


class EgressRule(ApiModel):
    """Extra destinations the session may reach, beyond DNS and public HTTPS."""

    cidr: str = Field(
        ...,
        max_length=43,
        description="Destination CIDR, e.g. `10.0.5.0/24` or `203.0.113.7/32`.",
    )
    ports: list[PortSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Allowed ports; empty allows every port of the CIDR.",
    )
    cel_rules: ClassVar[list[dict[str, str]]] = [
        cel(
            "isCIDR(self.cidr)",
            "network.egress[].cidr must be a CIDR such as 10.0.0.0/8 or 203.0.113.7/32",
            ".cidr",
        ),
    ]


class NetworkSpec(ApiModel):
    """What the session may reach and who may reach it."""

    allow_public_https: bool = Field(
        True,
        description="Allow TCP 443 to public addresses (private ranges and the cloud metadata "
        "address stay blocked). The Anthropic API needs it unless a proxy is in egress.",
    )
    egress: list[EgressRule] = Field(
        default_factory=list, max_length=32, description="Extra allowed destinations."
    )
    ingress_from_namespaces: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Namespaces (besides the operator's) whose pods may reach the runner port.",
        json_schema_extra={"items": {"type": "string", "maxLength": 63}},
    )


class StorageSpec(ApiModel):
    """The PersistentVolumeClaim that keeps a Hybrid session's workspace and transcript."""

    size: Quantity = Field("5Gi", description="Requested size of the volume.")
    storage_class_name: str | None = Field(
        None, max_length=253, description="StorageClass; the cluster default when unset."
    )


class CredentialsSpec(ApiModel):
    """Where the Anthropic API key comes from. The key is never copied out of its Secret."""

    secret_name: str = Field(
        ..., max_length=253, description="Secret in the session's namespace holding the key."
    )
    key: str = Field(
        "ANTHROPIC_API_KEY", max_length=253, description="Key inside the Secret."
    )
    base_url: str | None = Field(
        None,
        pattern=r"^https?://",
        max_length=2048,
        description="Anthropic API base URL, e.g. a gateway or proxy. Defaults to the public API.",
    )


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
        description="The agents of a Shared session (at least two, unique names).",
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
        description="Upper bound on token cost per run, in US dollars (client-side estimate).",
    )
    permission_mode: PermissionMode = Field(
        PermissionMode.DEFAULT,
        description="Claude Code permission mode. The pod is the sandbox; `bypassPermissions` "
        "lets every tool run, `default` allows only spec.allowedTools.",
    )
    allowed_tools: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Tools the agent may use without asking, e.g. `Bash`, `Read`, `Write`.",
        json_schema_extra={"items": {"type": "string", "maxLength": 256}},
    )
    disallowed_tools: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Tools the agent may never use.",
        json_schema_extra={"items": {"type": "string", "maxLength": 256}},
    )
    mcp_servers: list[McpServer] = Field(
        default_factory=list, max_length=16, description="Remote MCP servers."
    )
    image: str | None = Field(
        None, max_length=512, description="Runner image; the operator's default when unset."
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU, memory and disk limits of the pod."
    )
    network: NetworkSpec = Field(
        default_factory=NetworkSpec, description="Egress allowlist and allowed callers."
    )
    idle_timeout: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        max_length=32,
        description="Hybrid only: inactivity after which the pod is stopped (the volume stays), "
        "e.g. `15m`. Defaults to 15m.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="Ephemeral only: delete the session this long after it finished.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=31_536_000,
        description="Ephemeral only: fail the run if it takes longer than this.",
    )
    retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Ephemeral only: new pods tried after a failed run (0: fail at once).",
    )
    storage: StorageSpec | None = Field(
        None, description="Hybrid only: the volume that keeps workspace and transcript."
    )
    credentials: CredentialsSpec | None = Field(
        None, description="Secret holding the Anthropic API key."
    )
    suspend: bool = Field(
        False,
        description="Stop the pod and keep the session (and a Hybrid session's volume).",
    )

    cel_rules: ClassVar[list[dict[str, str]]] = [
        cel(
            "self.pattern != 'Ephemeral' || (has(self.prompt) && size(self.prompt) > 0)",
            "spec.prompt is required when spec.pattern is Ephemeral: it is the task to run",
            ".prompt",
        ),
        cel(
            "self.pattern == 'Shared' || !has(self.agents)",
            "spec.agents is only allowed when spec.pattern is Shared; remove it or use Shared",
            ".agents",
        ),
        cel(
            "self.pattern != 'Shared' || has(self.agents)",
            "spec.agents is required when spec.pattern is Shared (at least two agents)",
            ".agents",
        ),
        cel(
            "!has(self.agents) || self.agents.all(a, self.agents.exists_one(b, b.name == a.name))",
            "spec.agents[].name must be unique within the session",
            ".agents",
        ),
        cel(
            "self.pattern == 'Hybrid' || !has(self.idleTimeout)",
            "spec.idleTimeout is only allowed when spec.pattern is Hybrid",
            ".idleTimeout",
        ),
        cel(
            "self.pattern == 'Hybrid' || !has(self.storage)",
            "spec.storage is only allowed when spec.pattern is Hybrid (others keep no state)",
            ".storage",
        ),
        cel(
            "self.pattern == 'Ephemeral' || !has(self.ttlSecondsAfterFinished)",
            "spec.ttlSecondsAfterFinished is only allowed when spec.pattern is Ephemeral",
            ".ttlSecondsAfterFinished",
        ),
        cel(
            "self.pattern == 'Ephemeral' || !has(self.activeDeadlineSeconds)",
            "spec.activeDeadlineSeconds is only allowed when spec.pattern is Ephemeral",
            ".activeDeadlineSeconds",
        ),
        cel(
            "self.pattern == 'Ephemeral' || self.retries == 0",
            "spec.retries is only allowed when spec.pattern is Ephemeral",
            ".retries",
        ),
        cel(
            "!has(self.idleTimeout) || duration(self.idleTimeout) >= duration('1s')",
            "spec.idleTimeout must be at least 1s, e.g. 15m",
            ".idleTimeout",
        ),
        cel(
            "self.pattern == oldSelf.pattern",
            "spec.pattern is immutable: delete the session and create a new one",
            ".pattern",
        ),
    ]


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """metav1.Condition (KEP-1623)."""

    type: str = Field(..., max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    observed_generation: int | None = Field(
        None, ge=0, description="spec generation the condition was computed from."
    )
    last_transition_time: str = Field(
        ..., description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    reason: str = Field(..., max_length=1024, description="CamelCase reason.")
    message: str = Field("", max_length=32768, description="Human-readable details.")


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    IDLE = "Idle"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Usage(ApiModel):
    input_tokens: int = Field(0, ge=0, description="Input tokens.")
    output_tokens: int = Field(0, ge=0, description="Output tokens.")
    cache_read_input_tokens: int = Field(0, ge=0, description="Tokens read from the cache.")
    cache_creation_input_tokens: int = Field(0, ge=0, description="Tokens written to the cache.")


class RunResult(ApiModel):
    """Outcome of an Ephemeral run, as the runner reported it."""

    subtype: str = Field(..., max_length=64, description="success, error_max_turns, ...")
    text: str | None = Field(None, max_length=4096, description="The result text, cut to fit.")
    num_turns: int = Field(0, ge=0, description="Turns taken.")
    total_cost_usd: float = Field(0.0, ge=0, description="Token cost reported by the SDK.")
    usage: Usage = Field(default_factory=Usage, description="Token usage.")
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")


class AgentStatus(ApiModel):
    name: str = Field(..., max_length=63, description="Agent name.")
    state: str = Field("Unknown", max_length=32, description="idle, busy or error.")
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")
    num_turns: int = Field(0, ge=0, description="Turns taken.")
    total_cost_usd: float = Field(0.0, ge=0, description="Token cost.")


class CostStatus(ApiModel):
    tokens_usd: float = Field(0.0, ge=0, description="Token cost as the SDK reports it.")
    pod_seconds: int = Field(0, ge=0, description="Seconds the session's pods have run.")
    infrastructure_usd: float = Field(
        0.0, ge=0, description="pod seconds times the operator's price per container-hour."
    )


class RunnerInfo(ApiModel):
    sdk_version: str | None = Field(None, max_length=64, description="claude-agent-sdk version.")
    cli_version: str | None = Field(None, max_length=64, description="Claude Code CLI version.")


class AgentSessionStatus(ApiModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True
    )

    phase: Phase | None = Field(None, description="Summary of where the session is.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, PodReady, Credentials, Idle, Complete, Failed."
    )
    observed_generation: int | None = Field(None, ge=0, description="Last spec generation acted on.")
    pod_name: str | None = Field(None, max_length=253, description="Current pod, if any.")
    service_name: str | None = Field(None, max_length=253, description="Runner Service.")
    pvc_name: str | None = Field(None, max_length=253, description="Hybrid volume.")
    endpoint: str | None = Field(None, max_length=1024, description="Runner URL inside the cluster.")
    session_id: str | None = Field(None, max_length=128, description="SDK session id.")
    num_turns: int | None = Field(None, ge=0, description="Turns taken so far.")
    total_cost_usd: float | None = Field(None, ge=0, description="Token cost so far (SDK estimate).")
    result: RunResult | None = Field(None, description="Ephemeral outcome.")
    start_time: str | None = Field(None, description="When the current pod started.")
    completion_time: str | None = Field(None, description="When an Ephemeral run finished.")
    last_activity_time: str | None = Field(None, description="Last turn or message seen.")
    idle_since: str | None = Field(None, description="When a Hybrid session was scaled to zero.")
    wake_count: int | None = Field(None, ge=0, description="Wakes of a Hybrid session.")
    observed_wake: str | None = Field(
        None, max_length=256, description="Last corral.dev/wake annotation value acted on."
    )
    restarts: int | None = Field(None, ge=0, description="Pods recreated after being lost.")
    attempts: int | None = Field(None, ge=0, description="Ephemeral runs tried.")
    agents: list[AgentStatus] | None = Field(None, description="Shared: each agent's state.")
    runner: RunnerInfo | None = Field(None, description="Versions inside the pod.")
    cost: CostStatus | None = Field(None, description="Token and infrastructure cost.")


class ObjectMeta(BaseModel):
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
