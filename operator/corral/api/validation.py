"""How a pydantic validation error is told to a person: the field's path and the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails


def field_path(location: tuple[int | str, ...]) -> str:
    """`("spec", "agents", 0, "name")` as `spec.agents[0].name`."""
    text = ""
    for step in location:
        text += f"[{step}]" if isinstance(step, int) else f".{step}" if text else step
    return text


def problems(error: ValidationError, root: str, limit: int | None = None) -> str:
    """`field: reason; field: reason`, the whole object named `root` when no field is."""
    return "; ".join(
        f"{field_path(e['loc']) or root}: {_reason(e)}" for e in error.errors()[:limit]
    )


def _reason(error: ErrorDetails) -> str:
    # A check of ours raised ValueError with words meant for a person: without pydantic's
    # "Value error, " before them.
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return error["msg"]
