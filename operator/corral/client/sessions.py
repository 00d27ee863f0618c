"""AgentSessions as the client shows them: a typed view of the API object, and references."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from corral.client.errors import CorralError

GROUP, VERSION, PLURAL = "corral.dev", "v1alpha1", "agentsessions"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_ref(text: str, default_namespace: str) -> Ref:
    """`NS/NAME`, or `NAME` in the default namespace."""
    namespace, _, name = text.rpartition("/")
    namespace = namespace or default_namespace
    for part, what in ((namespace, "namespace"), (name, "session name")):
        if not _NAME.match(part):
            raise CorralError(
                f"{text!r} is not a session reference ({what} {part!r} is not valid)",
                "use NAMESPACE/NAME, e.g. demo/chat",
            )
    return Ref(namespace, name)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Session:
    """The fields of an AgentSession that users look at; `raw` is the whole object."""

    namespace: str
    name: str
    pattern: str
    phase: str
    suspend: bool = False
    num_turns: int | None = None
    total_cost_usd: float | None = None
    created: datetime | None = None
    idle_since: datetime | None = None
    last_activity: datetime | None = None
    pod_name: str | None = None
    result: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Session:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        turns = status.get("numTurns")
        cost = status.get("totalCostUsd")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            pattern=str(spec.get("pattern", "")),
            phase=str(status.get("phase") or "Pending"),
            suspend=bool(spec.get("suspend")),
            num_turns=int(turns) if isinstance(turns, int) else None,
            total_cost_usd=float(cost) if isinstance(cost, int | float) else None,
            created=parse_time(meta.get("creationTimestamp")),
            idle_since=parse_time(status.get("idleSince")),
            last_activity=parse_time(status.get("lastActivityTime")),
            pod_name=status.get("podName") or None,
            result=status.get("result") if isinstance(status.get("result"), dict) else None,
            conditions=[c for c in status.get("conditions") or [] if isinstance(c, dict)],
            raw=obj,
        )

    @property
    def ref(self) -> Ref:
        return Ref(self.namespace, self.name)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def result_text(self) -> str:
        return str((self.result or {}).get("text") or "")

    def explanation(self) -> str:
        """Why it is where it is: the message of a condition that is not fine, if any."""
        for condition in self.conditions:
            if condition.get("status") == "False" and condition.get("message"):
                return f"{condition.get('reason', '')}: {condition['message']}"
        return ""


def age(since: datetime | None, now: datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d (`-` when unknown)."""
    if since is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}" if value < 1 else f"${value:.2f}"


def table_row(session: Session, now: datetime | None = None) -> list[str]:
    """NAME PATTERN PHASE IDLE TURNS COST AGE, as `corral ls` prints them."""
    idle = age(session.idle_since, now) if session.idle_since else "-"
    turns = "-" if session.num_turns is None else str(session.num_turns)
    return [
        session.name,
        session.pattern,
        session.phase,
        idle,
        turns,
        cost(session.total_cost_usd),
        age(session.created, now),
    ]


TABLE_HEADERS = ["NAME", "PATTERN", "PHASE", "IDLE", "TURNS", "COST", "AGE"]
