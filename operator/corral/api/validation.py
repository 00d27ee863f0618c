"""How a pydantic validation error is told to a person: the field's path and the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def field_path(location: tuple[int | str, ...]) -> str:
    """`("spec", "agents", 0, "name")` as `spec.agents[0].name`."""
    text = ""
    for step in location:
        text += f"[{step}]" if isinstance(step, int) else f".{step}" if text else step
    return text


def problems(error: ValidationError, root: str, limit: int | None = None) -> str:
    """`field: reason; field: reason`, the whole object named `root` when no field is."""
    return "; ".join(f"{field_path(e['loc']) or root}: {e['msg']}" for e in error.errors()[:limit])
