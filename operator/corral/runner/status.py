"""The runner's `/v1/status` document, built from agent snapshots (pure).

Field names follow the AgentSession status (camelCase, `AgentStatus`, `RunnerInfo`,
`Usage` from corral.api), so the operator can validate parts of it with the same models.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from corral.api.v1alpha1 import (
    AgentStatus,
    RunnerInfo,
    Usage,
    clamp_cost,
    clamp_tokens,
    clamp_turns,
)
from corral.runner.agent import AgentSnapshot, AgentState
from corral.runner.events import USAGE_KEYS
from corral.runner.sdk import __version__ as SDK_VERSION


def _bundled_cli_version() -> str | None:
    """The CLI version the SDK bundles; the running CLI reports its own after a turn."""
    try:
        from claude_agent_sdk._cli_version import __cli_version__
    except ImportError:  # pragma: no cover - a future SDK may move it
        return None
    return __cli_version__


BUNDLED_CLI_VERSION = _bundled_cli_version()


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def overall_state(agents: Sequence[AgentSnapshot], stopping: bool) -> str:
    """`busy` while any agent works, else `idle`; the start/stop phases win over both."""
    states = {a.state for a in agents}
    if stopping:
        return "stopping"
    if AgentState.BUSY in states:
        return "busy"
    if states & {AgentState.STARTING, AgentState.RESTARTING}:
        return "starting"
    if states == {AgentState.ERROR} or (AgentState.ERROR in states and len(agents) == 1):
        return "error"
    return "idle"


def _usage(values: dict[str, int]) -> dict[str, Any]:
    return Usage(**{k: clamp_tokens(v) for k, v in values.items()}).model_dump(by_alias=True)


def build_status(
    *,
    pattern: str,
    agents: Sequence[AgentSnapshot],
    stopping: bool,
    ready: bool,
    started_at: datetime,
    fake_api: bool,
) -> dict[str, Any]:
    activity = [a.last_activity for a in agents if a.last_activity is not None]
    totals = {key: sum(a.usage.get(key, 0) for a in agents) for key in USAGE_KEYS}
    errors = [a.last_error | {"agent": a.name} for a in agents if a.last_error]
    return {
        "state": overall_state(agents, stopping),
        "ready": ready,
        "pattern": pattern,
        "sessionId": agents[0].session_id if len(agents) == 1 else None,
        "numTurns": sum(a.num_turns for a in agents),
        "messages": sum(a.messages for a in agents),
        "backgroundTasks": sum(a.background_tasks for a in agents),
        "scheduledWakeups": sum(a.scheduled_wakeups for a in agents),
        "nextDurableWakeup": rfc3339(next_durable_wakeup(agents)),
        "totalCostUsd": round(sum(a.total_cost_usd for a in agents), 6),
        "usage": _usage(totals),
        "lastActivityTime": rfc3339(max(activity)) if activity else None,
        "startTime": rfc3339(started_at),
        "lastError": max(errors, key=lambda e: e["time"]) if errors else None,
        "agents": [_agent(a) for a in agents],
        "runner": RunnerInfo(sdk_version=SDK_VERSION, cli_version=cli_version(agents)).model_dump(
            by_alias=True
        ),
        "fakeAnthropic": fake_api,
    }


def agent_status(a: AgentSnapshot) -> AgentStatus:
    return AgentStatus(
        name=a.name,
        state=str(a.state),
        session_id=a.session_id,
        num_turns=clamp_turns(a.num_turns),
        total_cost_usd=clamp_cost(a.total_cost_usd),
    )


def next_durable_wakeup(agents: Sequence[AgentSnapshot]) -> datetime | None:
    """When the first durable task of any agent fires (what wakes a sleeping session)."""
    return min((a.next_durable_wakeup for a in agents if a.next_durable_wakeup), default=None)


def cli_version(agents: Sequence[AgentSnapshot]) -> str | None:
    return next((a.cli_version for a in agents if a.cli_version), BUNDLED_CLI_VERSION)


def _agent(a: AgentSnapshot) -> dict[str, Any]:
    return agent_status(a).model_dump(by_alias=True) | {
        "messages": a.messages,
        "usage": _usage(a.usage),
        "lastActivityTime": rfc3339(a.last_activity),
        "lastError": a.last_error,
        "restarts": a.restarts,
        "backgroundTasks": a.background_tasks,
        "scheduledWakeups": a.scheduled_wakeups,
        "nextDurableWakeup": rfc3339(a.next_durable_wakeup),
    }
