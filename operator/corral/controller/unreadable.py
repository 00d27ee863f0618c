"""Sessions the API server stored but the operator's models cannot read.

The CRD is generated from the models and the two are meant to agree, but a stored object can
still fail to parse (a pattern read differently by Go's and Python's regex engines, an object
written under an older CRD). Such a session used to be only logged: it never got a status and
looked wedged to its owner. Now it gets SpecAccepted=False and Ready=False naming the fields,
and one Warning Event per generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from corral.api import validation
from corral.api.v1alpha1 import Condition
from corral.controller import conditions as cond

REASON = "SpecUnreadable"
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Unreadable:
    """What is needed to report an unreadable session: who it is and what is wrong."""

    name: str
    namespace: str
    uid: str | None
    generation: int | None
    message: str
    conditions: tuple[Condition, ...]

    @property
    def reported(self) -> bool:
        """Whether its status already says so for this generation and message."""
        found = cond.get_condition(list(self.conditions), cond.SPEC_ACCEPTED)
        return (
            found is not None
            and found.reason == REASON
            and found.observed_generation == self.generation
            and found.message == self.message
        )


def describe(error: ValidationError) -> str:
    """The fields the models refuse and why, e.g. `spec.image: String should match ...`."""
    message = "the API server stored this session but the operator cannot read it; fix " + (
        validation.problems(error, root="session", limit=5)
    )
    return message[:MAX_MESSAGE]


def unreadable(body: dict[str, Any], error: ValidationError) -> Unreadable:
    meta = body.get("metadata") or {}
    stored = []
    for raw in (body.get("status") or {}).get("conditions") or []:
        try:
            stored.append(Condition.model_validate(raw))
        except ValidationError:
            continue  # not ours to repair
    generation = meta.get("generation")
    return Unreadable(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        uid=meta.get("uid"),
        generation=generation if isinstance(generation, int) else None,
        message=describe(error),
        conditions=tuple(stored),
    )


def status_patch(session: Unreadable, now: str) -> dict[str, Any]:
    """The status that says what is wrong (SpecAccepted and Ready False)."""
    conditions = list(session.conditions)
    for type_ in (cond.SPEC_ACCEPTED, cond.READY):
        conditions = cond.set_condition(
            conditions, type_, False, REASON, session.message, session.generation, now
        )
    return {
        "conditions": [
            c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in conditions
        ]
    }
