"""What a runner tells the operator about its session (runner -> operator, over HTTP).

Runners push these (pods hold no Kubernetes credentials, and polling thousands of pods
would cost the operator more than the reports do): when a turn starts, when it ends, and
as a heartbeat while busy. The operator keeps the latest in memory and writes status only
when something material moved.

A report comes from inside a session pod, where the agent runs code: it is untrusted.
So each one carries a per-pod token (an HMAC, under a key only the operator holds, of the
session's namespace, name and UID and the pod's name: worthless for any other session or
pod), every number in it is bounded (a value the status schema would refuse must never
reach a status patch), and it says *whether* the runner is busy but not *when*: the
operator takes time from its own clock.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from corral.api import runtime
from corral.api.tokens import hmac_token
from corral.api.v1alpha1 import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_COST_USD,
    MAX_TURNS,
    AgentStatus,
)

ACTIVITY_PATH = "/v1/activity"
# The runner sends `Authorization: Bearer <token>`.
AUTHORIZATION_HEADER = "Authorization"
BEARER = "Bearer "
TOKEN_CONTEXT = b"corral.dev/activity-token/v1"

MAX_AGENTS = 16
MAX_REPORT_BYTES = 64 * 1024


class ReportModel(BaseModel):
    # Unknown keys are ignored, so a newer runner can still talk to an older operator.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class AgentReport(ReportModel):
    """One agent of the runner, as it reports it (bounded; see AgentStatus for status)."""

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    state: str = Field("Unknown", pattern=r"^[A-Za-z]+$", max_length=32)
    session_id: str | None = Field(None, max_length=128)
    num_turns: int = Field(0, ge=0, le=MAX_TURNS)
    total_cost_usd: float = Field(0.0, ge=0, le=MAX_COST_USD, allow_inf_nan=False)

    def to_status(self) -> AgentStatus:
        return AgentStatus.model_validate(self.model_dump())


class ActivityReport(ReportModel):
    namespace: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    pod_name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    busy: bool
    session_id: str | None = Field(None, max_length=128)
    num_turns: int | None = Field(None, ge=0, le=MAX_TURNS)
    total_cost_usd: float | None = Field(None, ge=0, le=MAX_COST_USD, allow_inf_nan=False)
    sdk_version: str | None = Field(None, max_length=64)
    cli_version: str | None = Field(None, max_length=64)
    agents: list[AgentReport] = Field(default_factory=list, max_length=MAX_AGENTS)
    # Running background tasks of all agents (the CLI's `background_tasks_changed`).
    background_tasks: int = Field(0, ge=0, le=runtime.MAX_BACKGROUND_TASKS)
    # Wakeups the agents scheduled in their CLIs that have not fired yet (ScheduleWakeup,
    # CronCreate): they are lost when the pod stops, so they count as background tasks do.
    scheduled_wakeups: int = Field(0, ge=0, le=runtime.MAX_SCHEDULED_WAKEUPS)
    # When the agents' durable tasks fire next (`CronCreate` with `durable: true`, kept on
    # the session's volume): only a CLI running at that minute runs them, so a sleeping
    # Hybrid session is woken ahead of it.
    next_durable_wakeup: AwareDatetime | None = None

    @model_validator(mode="after")
    def _agent_names_unique(self) -> Self:
        # status.agents is a map keyed by name: a duplicate would fail every status patch.
        names = [agent.name for agent in self.agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"agents: duplicate names {duplicates}; each agent appears once")
        return self


def activity_token(key: bytes, namespace: str, name: str, uid: str, pod_name: str) -> str:
    """The token of one pod of one session (hex HMAC-SHA256 under the operator's key)."""
    return hmac_token(key, TOKEN_CONTEXT, namespace, name, uid, pod_name)


def token_matches(
    keys: Iterable[bytes], token: str, namespace: str, name: str, uid: str, pod_name: str
) -> bool:
    """Whether `token` is this pod's token under any of `keys` (constant-time compare)."""
    presented = token.encode()
    return any(
        hmac.compare_digest(presented, activity_token(key, namespace, name, uid, pod_name).encode())
        for key in keys
    )


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when absent or malformed."""
    if not header or not header.startswith(BEARER):
        return None
    token = header[len(BEARER) :].strip()
    return token if 0 < len(token) <= 256 else None
