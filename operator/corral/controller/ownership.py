"""Whether an object that already has a child's name is this session's own.

A create answered 409 AlreadyExists is success only when the object is ours: a Service or
NetworkPolicy of that name made by someone else (by hand, by another tool, or by another
session) would leave the session without a policy of its own, or route its traffic, or
mount someone else's volume. Ours means: controlled by this session, checked by UID (a
deleted session's children, still being collected, are not ours either).
"""

from __future__ import annotations

from typing import Any

from corral.api.v1alpha1 import KIND


def controller_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The controlling owner reference of `body`, if any."""
    for owner in (body.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(owner, dict) and owner.get("controller"):
            return owner
    return None


def owned_by(body: dict[str, Any], session_uid: str | None) -> bool:
    owner = controller_of(body)
    return bool(session_uid) and owner is not None and owner.get("uid") == session_uid


def name_taken_message(kind: str, name: str, body: dict[str, Any]) -> str:
    """Why the session cannot use `name`, for a condition and a Warning Event."""
    owner = controller_of(body)
    if owner is None:
        whose = "it has no controlling owner"
    elif owner.get("kind") == KIND:
        whose = f"it belongs to AgentSession {str(owner.get('name'))[:253]!r}"
    else:
        whose = f"it belongs to {str(owner.get('kind'))[:63]} {str(owner.get('name'))[:253]!r}"
    return (
        f"{kind} {name!r} already exists and is not this session's ({whose}); no pod runs "
        f"until it is deleted or renamed"
    )
