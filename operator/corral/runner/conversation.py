"""Turn-taking between the agents of a Shared session: each answers the one before it.

The opener gets the user's text; every later agent gets the previous agent's reply,
prefixed with who said it. One round is every agent speaking once, in order.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from corral.runner.agent import AgentBusy, AgentUnavailable
from corral.runner.events import Event
from corral.runner.session import RunnerSession, UnknownAgent
from corral.runner.sse import turn_events

MAX_ROUNDS = 20
# A round may name an agent more than once (a, b, a, c); a session has at most 16 agents.
MAX_ORDER = 64
AgentName = Annotated[str, Field(min_length=1, max_length=63)]


class ConversationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1)
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS)
    opener: AgentName | None = None
    # Speaking order; default: the opener, then the others in spec order.
    order: list[AgentName] | None = Field(None, min_length=2, max_length=MAX_ORDER)


def speaking_order(names: Sequence[str], opener: str | None, order: list[str] | None) -> list[str]:
    if order is not None:
        unknown = [n for n in order if n not in names]
        if unknown:
            raise UnknownAgent(f"unknown agents in order: {', '.join(unknown)}")
        return order
    if opener is None:
        return list(names)
    if opener not in names:
        raise UnknownAgent(f"no agent {opener!r}; this session has: {', '.join(names)}")
    return [opener, *(n for n in names if n != opener)]


def relay(sender: str, text: str) -> str:
    return f"Message from agent {sender}:\n{text}"


def check_idle(session: RunnerSession, order: Sequence[str]) -> None:
    """Refuse up front rather than stop halfway when an agent is taken."""
    busy = [n for n in dict.fromkeys(order) if session.agent(n).busy]
    if busy:
        raise AgentBusy(f"agents busy: {', '.join(busy)}")


async def converse(
    session: RunnerSession, request: ConversationRequest, order: Sequence[str]
) -> AsyncGenerator[Event | None, None]:
    """Every event of every exchange, then one `conversation_end` summary (None: quiet)."""
    exchanges: list[Event] = []
    text, sender = request.text, None
    reason = "completed"
    for round_no in range(1, request.rounds + 1):
        for name in order:
            try:
                turn = session.agent(name).submit(text if sender is None else relay(sender, text))
            except (AgentBusy, AgentUnavailable) as exc:
                yield {"type": "error", "agent": name, "message": str(exc)}
                reason = "agent_unavailable"
                break
            try:
                async for event in turn_events(turn):
                    yield None if event is None else event | {"round": round_no}
            finally:
                turn.events.close()  # the client may have gone: nothing more is kept
            result = turn.result or {}
            reply = str(result.get("result") or "")
            exchanges.append(
                {
                    "round": round_no,
                    "agent": name,
                    "turn": turn.id,
                    "subtype": result.get("subtype"),
                    "text": reply,
                }
            )
            if result.get("is_error"):
                reason = "agent_error"
                break
            text, sender = reply, name
        if reason != "completed":
            break
    yield {
        "type": "conversation_end",
        "reason": reason,
        "rounds": request.rounds,
        "exchanges": exchanges,
    }
