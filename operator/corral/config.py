"""Operator-wide settings: what a session does not say for itself, and cluster specifics.

One object, read once at start (a YAML file mounted from the chart's ConfigMap), passed to
the render functions explicitly so they stay pure. Keys are camelCase in the file, like
the API, so Helm values map onto them one to one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from corral.api import runtime
from corral.api.v1alpha1 import DNS_LABEL_PATTERN, CredentialsSpec, PortSpec

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


class ConfigModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Toleration(ConfigModel):
    """A core/v1 Toleration (KWOK's fake nodes need `kwok.x-k8s.io/node=fake:NoSchedule`)."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PeerRule(ConfigModel):
    """Egress to pods of one namespace (all pods when `pod_labels` is empty) on `ports`."""

    namespace: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    ports: list[PortSpec] = Field(default_factory=list)


class IPBlock(ConfigModel):
    """A CIDR and the ranges carved out of it."""

    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


def _dns_rule() -> PeerRule:
    dns = [PortSpec(port=53, protocol="UDP"), PortSpec(port=53, protocol="TCP")]
    return PeerRule(namespace="kube-system", pod_labels={"k8s-app": "kube-dns"}, ports=dns)


def _public_ipv4() -> list[IPBlock]:
    return [IPBlock(cidr="0.0.0.0/0", except_=list(PRIVATE_IPV4_RANGES))]


class OperatorConfig(ConfigModel):
    """Everything the render functions need besides the session itself."""

    namespace: str = Field(
        "corral-system", description="Where the operator runs; its pods may reach runners."
    )
    default_image: str = runtime.DEFAULT_RUNNER_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
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
    default_idle_timeout: str = runtime.DEFAULT_IDLE_TIMEOUT
    default_active_deadline_seconds: int | None = Field(
        86_400, description="Ephemeral runs without spec.activeDeadlineSeconds stop after this."
    )
    default_storage_class_name: str | None = None
    price_per_container_hour_usd: float = Field(
        0.05, ge=0, description="Infrastructure price used for status.cost."
    )

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

    # Scheduling
    tolerations: list[Toleration] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    runtime_class_name: str | None = Field(None, description="e.g. gvisor, for a stronger sandbox.")
    priority_class_name: str | None = None

    # Shutdown: the runner finishes or checkpoints the turn in flight; Hybrid flushes its volume.
    termination_grace_period_seconds: int = Field(30, ge=0)
    hybrid_termination_grace_period_seconds: int = Field(120, ge=0)

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
    def load(cls, path: Path | None) -> OperatorConfig:
        """The config in `path` (YAML); the defaults when there is none."""
        if path is None:
            return cls()
        body = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls.model_validate(body)
