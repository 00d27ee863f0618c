"""SessionGuardrail (`corral.dev/v1alpha1`): what the AgentSessions of one namespace may ask for.

A platform admin creates SessionGuardrails in a session namespace; the chart's
ValidatingAdmissionPolicy (helm/corral/templates/guardrails.yaml) takes every
SessionGuardrail of the session's namespace as its parameters and refuses sessions outside
them (docs/guardrails.md). An unset field restricts nothing; an empty list allows nothing.

A CRD rather than ConfigMaps: its fields are typed and checked when an admin writes them, a
namespace's own editors cannot change it (the built-in edit and admin roles do not cover
new resources), and the API server's parameter informers for core kinds such as ConfigMap
stop for good once no binding uses them (kubernetes/kubernetes#130887), which CRD
parameters do not.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from corral.api.v1alpha1 import (
    GROUP,
    VERSION,
    ApiModel,
    Quantity,
    Rule,
    cel,
    list_set,
    parse_cidr,
)

KIND = "SessionGuardrail"
PLURAL = "sessionguardrails"
SINGULAR = "sessionguardrail"

# A host name, `*.` and a suffix, or `*`; optionally `:port` (as spec.network.allowedDomains).
DOMAIN_PATTERN = (
    r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)"
    r"(:[1-9][0-9]{0,4})?$"
)
ImagePrefix = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]
DomainPattern = Annotated[str, Field(max_length=260, pattern=DOMAIN_PATTERN)]
CidrText = Annotated[str, Field(max_length=43)]


def _all_cidrs(texts: list[str] | None) -> bool:
    for text in texts or []:
        try:
            parse_cidr(text)
        except ValueError:
            return False
    return True


class MaxResources(ApiModel):
    """Largest spec.resources a session may ask for; an unset field is not limited."""

    cpu: Quantity | None = Field(None, description="Largest spec.resources.cpu, e.g. `2`.")
    memory: Quantity | None = Field(None, description="Largest spec.resources.memory, e.g. `4Gi`.")
    disk: Quantity | None = Field(None, description="Largest spec.resources.disk, e.g. `10Gi`.")


class SessionGuardrailSpec(ApiModel):
    """Limits on the AgentSessions of this namespace. Unset: not restricted."""

    allowed_image_prefixes: list[ImagePrefix] | None = Field(
        None,
        max_length=64,
        description="spec.image must start with one of these, e.g. "
        "`registry.example.com/corral/` (end a prefix with `/` or `:` so that it cannot match "
        "a longer name). Sessions without spec.image (the operator's default) are allowed.",
        json_schema_extra=list_set(),
    )
    allowed_egress_cidrs: list[CidrText] | None = Field(
        None,
        max_length=64,
        description="Every spec.network.egress[].cidr must lie within one of these, e.g. "
        "`10.20.0.0/16`.",
        json_schema_extra=list_set(),
    )
    allowed_domains: list[DomainPattern] | None = Field(
        None,
        max_length=64,
        description="Destinations a session may name: entries of spec.network.allowedDomains "
        "and the hosts of spec.mcpServers must match one: `github.com` (that name only), "
        "`*.example.com` (its subdomains), `*` (anything); `:port` limits the port. "
        "spec.network.allowPublicHttps counts as `*:443`.",
        json_schema_extra=list_set(),
    )
    max_resources: MaxResources | None = Field(
        None, description="Largest CPU, memory and disk of a session pod."
    )
    max_storage: Quantity | None = Field(
        None, description="Largest spec.storage.size of a Hybrid session, e.g. `20Gi`."
    )
    max_budget_usd: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Largest spec.maxBudgetUsd; sessions must then set spec.maxBudgetUsd.",
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = (
        cel(
            "!has(self.allowedEgressCidrs) || self.allowedEgressCidrs.all(c, isCIDR(c))",
            "spec.allowedEgressCidrs entries must be CIDRs such as 10.20.0.0/16",
            ".allowedEgressCidrs",
            check=lambda s: _all_cidrs(s.allowed_egress_cidrs),
        ),
    )


class GuardrailMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"


class SessionGuardrail(BaseModel):
    """A whole SessionGuardrail object, as written by an admin or rendered by the chart."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    api_version: str = Field(f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: str = KIND
    metadata: GuardrailMeta
    spec: SessionGuardrailSpec
