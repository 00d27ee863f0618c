"""Operator-wide settings: what a session does not say for itself, and cluster specifics.

One object, read once at start (a YAML file mounted from the chart's ConfigMap), passed to
the render functions explicitly so they stay pure. Keys are camelCase in the file, like
the API, so Helm values map onto them one to one.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from corral.api import runtime
from corral.api.units import QUANTITY_PATTERN, parse_duration
from corral.api.v1alpha1 import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    CredentialsSpec,
    DnsLabel,
    PortSpec,
    Toleration,
)

# Private, shared and special-purpose ranges a session may not reach through the public
# HTTPS rule. 169.254.0.0/16 covers the cloud metadata service (169.254.169.254).
PRIVATE_IPV4_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
)
# Never reachable, even through spec.network.egress: link-local (metadata services) and
# AWS's IPv6 metadata address.
ALWAYS_BLOCKED = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
# Where a session's spec.credentials.baseUrl may point unless the operator allows more.
ANTHROPIC_API = "https://api.anthropic.com"
SecretName = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
# Environment variables that carry a model key (never set in a pod with the model proxy).
MODEL_KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
# The start-up CPU limit (see corral.render.cpu_boost); measured in docs/startup-benchmarks.md.
DEFAULT_STARTUP_CPU_LIMIT = "2"
# An activity key shorter than this is refused at start (a guessable key forges reports).
MIN_ACTIVITY_KEY_BYTES = 32

log = logging.getLogger("corral.config")


class ConfigModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class PeerRule(ConfigModel):
    """Egress to pods of one namespace (all pods when `pod_labels` is empty) on `ports`."""

    namespace: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    ports: list[PortSpec] = Field(default_factory=list)


class ScraperPeer(ConfigModel):
    """Pods of one namespace (all of them when `pod_labels` is empty) that scrape runners."""

    namespace: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    pod_labels: dict[str, str] = Field(default_factory=dict)


class IPBlock(ConfigModel):
    """A CIDR and the ranges carved out of it."""

    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


# Names and suffixes session pods reach without the egress proxy: the pod itself and the
# cluster's Services (the operator's activity port, the gateway). Everything else goes
# through the proxy, which allows an address in the session's own CIDRs as well.
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1", ".svc", ".cluster.local")


class EgressProxyConfig(ConfigModel):
    """The gateway's egress proxy, as session pods reach it."""

    url: str = Field(
        ...,
        pattern=r"^http://\S+$",
        description="HTTPS_PROXY and HTTP_PROXY of every session pod, e.g. "
        "http://corral-gateway.corral-system.svc:3128.",
    )
    port: int = Field(
        ..., ge=1, le=65535, description="The gateway pods' egress port (the NetworkPolicy's)."
    )
    no_proxy: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NO_PROXY),
        description="NO_PROXY of every session pod.",
    )


class EgressCanaryConfig(ConfigModel):
    """Where each runner checks that its pod's NetworkPolicy is in force before any CLI
    starts (corral.runner.egress_gate): an always-up TCP address every pod reaches without
    a policy and no session policy allows (the chart: the gateway's traffic port)."""

    address: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?:[0-9]{1,5}$",
        description="host:port, e.g. corral-gateway.corral-system.svc:8080.",
    )
    max_wait_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="The longest a runner holds its CLIs: then they start anyway, with a "
        "warning and corral_runner_egress_gate_unconfirmed 1.",
    )
    try_seconds: float = Field(
        0.15,
        gt=0,
        le=10,
        description="A try this long without an answer is the policy dropping it (and the "
        "least a start waits where the policy is in force from the pod's first packet).",
    )


def _dns_rule() -> PeerRule:
    dns = [PortSpec(port=53, protocol="UDP"), PortSpec(port=53, protocol="TCP")]
    return PeerRule(namespace="kube-system", pod_labels={"k8s-app": "kube-dns"}, ports=dns)


def _public_ipv4() -> list[IPBlock]:
    return [IPBlock(cidr="0.0.0.0/0", except_=list(PRIVATE_IPV4_RANGES))]


class LongContextPrice(ConfigModel):
    """A model's premium for calls whose prompt is long: Anthropic charges every token of a
    call whose input (cache reads and writes included) exceeds a threshold at raised rates,
    its cache rates raised alike."""

    above_input_tokens: int = Field(
        200_000,
        ge=1,
        description="Input tokens (cache reads and writes included) above which a call is "
        "charged at the raised rates.",
    )
    input_factor: float = Field(
        2.0, ge=1, description="What input, cache reads and cache writes cost then, times."
    )
    output_factor: float = Field(1.5, ge=1, description="What output costs then, times.")


class ModelPrice(ConfigModel):
    """USD per million tokens of the models whose name starts with `model`."""

    model: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")
    input: float = Field(..., ge=0)
    output: float = Field(..., ge=0)
    cache_read: float = Field(..., ge=0)
    cache_write: float = Field(..., ge=0, description="Cache writes kept 5 minutes.")
    cache_write_1h: float | None = Field(
        None,
        ge=0,
        alias="cacheWrite1h",  # not camel case's "1H"
        description="Cache writes kept an hour; unset: twice `input` (the list price's rule).",
    )
    long_context: LongContextPrice | None = Field(
        None, description="The model's premium for long prompts; unset: none."
    )

    @property
    def hour_cache_write(self) -> float:
        return self.input * 2 if self.cache_write_1h is None else self.cache_write_1h

    def factors(self, prompt_tokens: int) -> tuple[float, float]:
        """What a call with `prompt_tokens` of input (cache reads and writes included)
        pays for its input and for its output, times the rates above."""
        premium = self.long_context
        if premium is None or prompt_tokens <= premium.above_input_tokens:
            return 1.0, 1.0
        return premium.input_factor, premium.output_factor

    @property
    def dearest_output(self) -> float:
        """Output's price at its highest: with the long-prompt premium, if the model has one."""
        return self.output * (self.long_context.output_factor if self.long_context else 1.0)


def _default_prices() -> list[ModelPrice]:
    # Anthropic's list prices (USD per million tokens) when this table was written; the
    # admin's configuration replaces the whole table. Cache writes kept 5 minutes at
    # `cache_write`, kept an hour at twice the input price. Sonnet 4 and 4.5 charge a call
    # whose prompt exceeds 200K tokens (their 1M-token context) twice for input and 1.5
    # times for output.
    rows = [
        ("claude-opus-4-5", 5.0, 25.0, 0.50, 6.25, None),
        ("claude-opus-4", 15.0, 75.0, 1.50, 18.75, None),
        ("claude-sonnet-4", 3.0, 15.0, 0.30, 3.75, LongContextPrice()),
        ("claude-3-7-sonnet", 3.0, 15.0, 0.30, 3.75, None),
        ("claude-haiku-4-5", 1.0, 5.0, 0.10, 1.25, None),
        ("claude-3-5-haiku", 0.80, 4.0, 0.08, 1.0, None),
    ]
    return [
        ModelPrice(model=m, input=i, output=o, cache_read=r, cache_write=w, long_context=long)
        for m, i, o, r, w, long in rows
    ]


class ModelProxyConfig(ConfigModel):
    """The gateway's model proxy: sessions talk to the model through it, with a credential
    of their own; the real key stays with the gateway (docs/model-proxy.md)."""

    url: str = Field(
        ...,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=2048,
        description="ANTHROPIC_BASE_URL of every session: the gateway's model port as pods "
        "reach it, e.g. http://corral-gateway.corral-system.svc:8082.",
    )
    port: int = Field(
        8082, ge=1, le=65535, description="The gateway pods' model port (session egress)."
    )
    upstream_url: str = Field(
        ANTHROPIC_API,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        max_length=2048,
        description="Where the gateway sends model calls, with the real key: the Anthropic "
        "API or any Messages-API-compatible endpoint.",
    )
    key_file: str | None = Field(
        None, description="File (in the gateway's pods) holding the real API key."
    )
    prices: list[ModelPrice] = Field(
        default_factory=_default_prices,
        max_length=256,
        description="USD per million tokens by model-name prefix (longest prefix wins); a "
        "model that matches none is charged at the highest price of the table.",
    )
    web_search_usd_per_1000: float = Field(
        10.0,
        ge=0,
        description="USD per 1,000 web searches the model runs for a call (server tool use), "
        "added to its cost.",
    )
    requests_per_minute: int = Field(
        120, ge=0, description="Model calls per minute per session; 0: no limit."
    )
    tokens_per_minute: int = Field(
        2_000_000, ge=0, description="Tokens (all kinds) per minute per session; 0: no limit."
    )
    namespace_budgets_usd: dict[str, float] = Field(
        default_factory=dict,
        description="Per-namespace budget in USD of metered model cost (all sessions of the "
        "namespace, deleted ones included, per calendar month UTC).",
    )
    namespace_keys: dict[DnsLabel, SecretName] = Field(
        default_factory=dict,
        max_length=1000,
        description="Per namespace: a Secret in that namespace whose ANTHROPIC_API_KEY the "
        "gateway uses for that namespace's sessions instead of its own key (each team pays "
        "with its own account). The gateway needs `get` on exactly that Secret (the chart's "
        "gateway.modelProxy.namespaceKeys grants it).",
    )
    key_refresh_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="How long a namespace's key is used before its Secret is read again "
        "(a rotated or removed key takes effect within this time).",
    )
    spend_config_map: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="ConfigMap in the operator's namespace where the gateway keeps each "
        "namespace's spend this month (for namespaceBudgetsUsd). Unset: the spend is the "
        "sum of the namespace's existing sessions' metered cost.",
    )
    status_interval_seconds: float = Field(
        10.0, ge=1, le=600, description="How often usage is written to a session's status."
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest model request body accepted."
    )


class OperatorConfig(ConfigModel):
    """Everything the render functions need besides the session itself."""

    namespace: str = Field(
        "corral-system", description="Where the operator runs; its pods may reach runners."
    )
    default_image: str = runtime.DEFAULT_RUNNER_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[SecretName] = Field(default_factory=list)
    runner_extra_args: list[str] = Field(
        default_factory=list, description="Appended to the runner command (tests, debugging)."
    )
    runner_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment of every runner container."
    )
    default_model: str = runtime.DEFAULT_MODEL
    default_anthropic_base_url: str | None = Field(
        None, description="ANTHROPIC_BASE_URL when a session names none; unset: public API."
    )
    default_credentials: CredentialsSpec | None = Field(
        None, description="Secret (in the session's namespace) used when a session names none."
    )
    allowed_base_urls: list[str] = Field(
        default_factory=lambda: [ANTHROPIC_API],
        description="Where spec.credentials.baseUrl may point: a URL is allowed when its "
        "scheme, host and port equal an entry's and its path starts with the entry's path. "
        "The API key is sent there, so only list hosts you trust with it.",
    )
    default_idle_timeout: str = Field(
        runtime.DEFAULT_IDLE_TIMEOUT,
        description="spec.idleTimeout of Hybrid sessions that set none (at least 1s).",
    )
    default_background_task_timeout: str = Field(
        runtime.DEFAULT_BACKGROUND_TASK_TIMEOUT,
        description="spec.backgroundTaskTimeout of Hybrid sessions that set none.",
    )
    default_active_deadline_seconds: int | None = Field(
        86_400,
        ge=1,
        le=31_536_000,  # the spec's own bounds: the pod's field refuses 0 and below
        description="Ephemeral runs without spec.activeDeadlineSeconds stop after this.",
    )
    default_storage_class_name: str | None = Field(
        None, pattern=DNS_SUBDOMAIN_PATTERN, max_length=253
    )
    max_storage: str | None = Field(
        "100Gi",
        pattern=QUANTITY_PATTERN,
        description="Largest spec.storage.size a Hybrid session may ask for; a larger one is "
        "refused (condition StorageReady=False and a Warning Event). null: no maximum.",
    )
    storage_access_mode: Literal["ReadWriteOncePod", "ReadWriteOnce"] = Field(
        "ReadWriteOncePod",
        description="Access mode of Hybrid volumes: ReadWriteOncePod (one pod at a time, "
        "enforced); ReadWriteOnce for CSI drivers without SINGLE_NODE_MULTI_WRITER support.",
    )
    price_per_container_hour_usd: float = Field(
        0.05, ge=0, description="Infrastructure price used for status.cost."
    )
    startup_cpu_limit: str | None = Field(
        DEFAULT_STARTUP_CPU_LIMIT,
        pattern=QUANTITY_PATTERN,
        description="CPU limit of a session pod while its runner starts, when above the "
        "session's spec.resources.cpu; the pod's CPU request stays the session's, and the "
        'limit is lowered in place (pods/resize) once the runner is ready. "0" or null: '
        "no boost (pods start at the session's limit).",
    )

    @field_validator("default_idle_timeout", "default_background_task_timeout")
    @classmethod
    def _a_duration(cls, value: str, info: ValidationInfo) -> str:
        # Checked here as the spec's own values are by their model: a session's
        # reconcile reads these and must not meet a value it cannot parse.
        duration = parse_duration(value)
        if info.field_name == "default_idle_timeout" and duration < timedelta(seconds=1):
            raise ValueError(f"{value!r} is shorter than 1s, e.g. 15m")
        return value

    @field_validator("startup_cpu_limit", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    # Network
    dns: PeerRule = Field(default_factory=_dns_rule, description="Where cluster DNS runs.")
    public_https: list[IPBlock] = Field(
        default_factory=_public_ipv4, description="What `allowPublicHttps` opens on TCP 443."
    )
    always_blocked: list[str] = Field(
        default_factory=lambda: list(ALWAYS_BLOCKED),
        description="Carved out of every spec egress rule that contains them.",
    )
    extra_egress: list[PeerRule] = Field(
        default_factory=list,
        description="Egress every session gets, e.g. an in-cluster Anthropic gateway.",
    )

    # Activity: runners push reports to the operator (see corral.api.activity).
    activity_url: str | None = Field(
        None,
        description="Where runners post activity, e.g. "
        "http://corral.corral-system.svc:8081/v1/activity. Unset: derived from the operator's "
        "Service when it runs in a cluster (see in_cluster_activity); otherwise no reports, "
        "and Hybrid sessions are not scaled down when idle (condition ActivityReports).",
    )
    activity_peer: PeerRule | None = Field(
        None, description="Egress every session gets to reach the operator's activity port."
    )
    durable_wake_lead_seconds: float = Field(
        # A wake takes seconds; the rest is room for a busy node, and for a CLI that fires
        # a one-shot task earlier than the runner computes (CLI 2.1.327: up to 90 s).
        120.0,
        ge=1,
        le=3600,
        description="How long before an agent's durable task is due a sleeping Hybrid "
        "session is woken (only a CLI running at that minute runs it): longer where a wake "
        "takes long, e.g. nodes that pull the runner image first.",
    )
    failover_grace_seconds: float = Field(
        45.0,
        ge=0,
        le=3600,
        description="After becoming leader, how long the operator waits for a runner's "
        "activity report before it may scale that session down (a busy runner heartbeats "
        "every 30 s, to the leader only). 0: no wait (runners that never report).",
    )
    # The session gateway (corral gateway): the only way into a runner besides the
    # opt-ins below. It proves itself to each runner with a per-session credential.
    gateway: ScraperPeer | None = Field(
        None,
        description="The gateway's pods. Set: each session's NetworkPolicy admits ingress to "
        "the runner only from them (and spec.network.ingressFromNamespaces), and each runner "
        "refuses callers without the session's gateway credential (derived from "
        "activityKeyFile's key, which the gateway must read too). Unset: ingress from the "
        "operator's whole namespace, and runners accept any caller the policy admits.",
    )
    egress_canary: EgressCanaryConfig | None = Field(
        None,
        description="Set: each runner starts no CLI before a connection to this address "
        "goes unanswered, i.e. before the node's NetworkPolicy agent filters the new pod "
        "(some, like kube-router, leave a new pod's egress open for up to a second, while "
        "the CLI runs hooks the agent left on the volume). Unset: CLIs start at once.",
    )
    egress_proxy: EgressProxyConfig | None = Field(
        None,
        description="The gateway's egress proxy. Set (with `gateway`): session pods get "
        "HTTPS_PROXY, HTTP_PROXY and NO_PROXY pointing at it, and their NetworkPolicy allows "
        "egress only to cluster DNS, the gateway, the operator's peers and the spec's CIDRs: "
        "allowPublicHttps opens no port any more, it allows `*:443` through the proxy. "
        "Unset: allowPublicHttps opens TCP 443 to public addresses in the NetworkPolicy.",
    )
    model_proxy: ModelProxyConfig | None = Field(
        None,
        description="Set (with gateway): session pods get ANTHROPIC_BASE_URL = modelProxy.url "
        "and a per-session credential as their key; no API key, key reference or key file "
        "reaches a session pod (spec.credentials and runnerEnv keys are not used).",
    )
    # Metrics: who may scrape a runner's /metrics (served on the runner port).
    metrics_scraper: ScraperPeer | None = Field(
        None,
        description="Ingress every session gets on the runner port from these pods (e.g. "
        "Prometheus), to scrape the runner's /metrics. Unset: runners cannot be scraped.",
    )
    activity_key_file: str | None = Field(
        None,
        description="File holding the key(s) that sign each pod's activity token, one per "
        "line: the first signs, any verifies (rotation). Every replica must read the same "
        "file (the chart mounts a Secret). Unset: a random key per process, so reports of "
        "pods made before a restart or a leader change are refused.",
    )
    _activity_keys: tuple[bytes, ...] = PrivateAttr(default=())

    # Scheduling: the platform's placement of every session pod. A session's own
    # spec.scheduling adds to it (the same Toleration model, and its rules, for both);
    # on a nodeSelector key both set, this one wins.
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations of every session pod (KWOK's fake nodes need "
        "`kwok.x-k8s.io/node=fake:NoSchedule`).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels every session pod's node must have."
    )
    runtime_class_name: str | None = Field(None, description="e.g. gvisor, for a stronger sandbox.")
    priority_class_name: str | None = None

    # Shutdown: the runner finishes or checkpoints the turn in flight; Hybrid flushes its volume.
    termination_grace_period_seconds: int = Field(30, ge=0)
    hybrid_termination_grace_period_seconds: int = Field(120, ge=0)

    @model_validator(mode="after")
    def _model_proxy_keeps_keys_out(self) -> OperatorConfig:
        if self.model_proxy is None:
            return self
        if self.gateway is None:
            raise ValueError("modelProxy needs gateway: the model proxy is part of the gateway")
        leaked = [name for name in MODEL_KEY_VARIABLES if name in self.runner_env]
        if leaked:
            raise ValueError(
                f"runnerEnv sets {', '.join(leaked)} while modelProxy is on: that would put a "
                "key in every session pod; give the key to the gateway instead (Helm: "
                "gateway.modelProxy.apiKeySecret) and remove it from runnerEnv"
            )
        return self

    @property
    def model_proxy_url(self) -> str | None:
        return self.model_proxy.url if self.model_proxy is not None else None

    @property
    def proxied_egress(self) -> EgressProxyConfig | None:
        """The egress proxy session pods use: only with a gateway to run it."""
        return self.egress_proxy if self.gateway is not None else None

    @property
    def activity_keys(self) -> tuple[bytes, ...]:
        """Keys of activity tokens (first: signs new pods' tokens); empty: none loaded."""
        return self._activity_keys

    def with_activity_keys(self, keys: tuple[bytes, ...]) -> OperatorConfig:
        copy = self.model_copy()
        copy._activity_keys = keys
        return copy

    def base_url_allowed(self, url: str) -> bool:
        """Whether the API key may be sent to `url` (see `allowed_base_urls`)."""
        trusted = [*self.allowed_base_urls, self.default_anthropic_base_url or ANTHROPIC_API]
        return any(url_within(url, entry) for entry in trusted)

    def in_cluster_activity(self, namespace: str, service: str, port: int) -> OperatorConfig:
        """This config with, unless it names them itself, runners reporting to the operator's
        Service `service` in `namespace` on `port`, and the egress rule to get there (every
        pod of that namespace on that port: the operator's own labels are not known here)."""
        if self.activity_url:
            return self
        url = f"http://{service}.{namespace}.svc:{port}/v1/activity"
        peer = self.activity_peer or PeerRule(namespace=namespace, ports=[PortSpec(port=port)])
        return self.model_copy(update={"activity_url": url, "activity_peer": peer})

    @classmethod
    def read(cls, path: Path) -> OperatorConfig:
        """The config in `path` (YAML), without loading keys (the gateway's use)."""
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})

    @classmethod
    def load(cls, path: Path | None) -> OperatorConfig:
        """The config in `path` (YAML), the defaults when there is none, with its keys."""
        config = cls()
        if path is not None:
            body = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            config = cls.model_validate(body)
        return config.with_activity_keys(load_activity_keys(config.activity_key_file))


def url_within(url: str, allowed: str) -> bool:
    """`url` has `allowed`'s scheme, host and port, and its path at or below `allowed`'s."""
    try:
        got, want = urlsplit(url), urlsplit(allowed)
        ports = (got.port, want.port)
    except ValueError:
        return False
    if got.username is not None or got.password is not None:
        return False  # "https://api.anthropic.com@evil.example" is evil.example
    base = want.path.rstrip("/")
    return (
        got.scheme.lower() == want.scheme.lower()
        and (got.hostname or "") == (want.hostname or "")
        and ports[0] == ports[1]
        and (got.path.rstrip("/") == base or got.path.startswith(base + "/"))
    )


def load_activity_keys(path: str | None) -> tuple[bytes, ...]:
    """The keys in `path`, one per line (blank lines ignored); a random one without a path."""
    if path is None:
        log.warning(
            "no activityKeyFile: activity tokens use a random key of this process; pods made "
            "before a restart or by another replica will have their reports refused"
        )
        return (secrets.token_bytes(MIN_ACTIVITY_KEY_BYTES),)
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    keys = tuple(line.strip().encode() for line in lines if line.strip())
    if not keys:
        raise ValueError(f"activityKeyFile {path} holds no key: put one random line in it")
    short = [i + 1 for i, key in enumerate(keys) if len(key) < MIN_ACTIVITY_KEY_BYTES]
    if short:
        raise ValueError(
            f"activityKeyFile {path}: key(s) on line(s) {short} are shorter than "
            f"{MIN_ACTIVITY_KEY_BYTES} characters; use e.g. `openssl rand -hex 32`"
        )
    return keys
