"""What an agent keeps across pods of a Hybrid session: its SDK session id and totals.

One small JSON file per agent on the session's volume, replaced atomically so a SIGKILL
mid-write leaves the previous version rather than a torn file. The agent can write that
volume, so the file is untrusted input: read at most MAX_FILE_BYTES of a regular file,
validated field by field; anything else is ignored with a warning and the agent starts
afresh rather than crash-looping the pod.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.api import validation
from corral.runner.bounded_file import read_bounded, replace_file
from corral.runner.events import USAGE_KEYS
from corral.runner.jsonlog import log_event

log = logging.getLogger("corral.runner.saved_session")

# The real file is about 300 bytes.
MAX_FILE_BYTES = 64 * 1024
# Counts beyond this are not from a real session (and would not fit status's int64).
MAX_COUNT = 2**53
MAX_COST_USD = 1e9
# The CLI's session ids are UUIDs; `resume=` passes the id as a CLI argument, so nothing
# that could read as an option (a leading "-") or a path gets through.
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


@dataclass
class SavedSession:
    session_id: str | None = None
    num_turns: int = 0
    messages: int = 0
    total_cost_usd: float = 0.0
    # The CLI's own running cost of this session when it last exited cleanly: a resumed
    # CLI starts its cumulative `total_cost_usd` from there, not from zero.
    cli_cost: float = 0.0
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_KEYS, 0))

    def copy(self) -> SavedSession:
        return SavedSession(**{**asdict(self), "usage": dict(self.usage)})


class SavedSessionFile(BaseModel):
    """The file's schema: exact types (no "3" for 3), bounded numbers, no other keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    num_turns: int = Field(0, ge=0, le=MAX_COUNT)
    messages: int = Field(0, ge=0, le=MAX_COUNT)
    total_cost_usd: float = Field(0.0, ge=0, le=MAX_COST_USD)
    cli_cost: float = Field(0.0, ge=0, le=MAX_COST_USD)
    usage: dict[str, int] = Field(default_factory=dict)

    @field_validator("total_cost_usd", "cli_cost", mode="before")
    @classmethod
    def _finite_number(cls, value: object) -> object:
        # JSON numbers without a fraction arrive as int; strict mode would refuse them.
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("usage")
    @classmethod
    def _known_counts(cls, usage: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(usage) - set(USAGE_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {list(USAGE_KEYS)}")
        bad = [key for key, value in usage.items() if not 0 <= value <= MAX_COUNT]
        if bad:
            raise ValueError(f"counts out of range 0..{MAX_COUNT}: {bad}")
        return usage


def parse_saved(data: bytes) -> SavedSession:
    """A SavedSession from the file's bytes; ValueError naming what is wrong."""
    try:
        body = SavedSessionFile.model_validate(json.loads(data))
    except ValidationError as exc:
        raise ValueError(validation.problems(exc, root="file")) from None
    return SavedSession(
        session_id=body.session_id or None,
        num_turns=body.num_turns,
        messages=body.messages,
        total_cost_usd=body.total_cost_usd,
        cli_cost=body.cli_cost,
        usage={key: body.usage.get(key, 0) for key in USAGE_KEYS},
    )


def load_saved(path: Path) -> SavedSession:
    """The saved state, or a fresh one when the file is missing, damaged or invalid."""
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
        return SavedSession() if data is None else parse_saved(data)
    # json's errors are ValueErrors; deep nesting ("[[[[...") is a RecursionError.
    except (OSError, ValueError, RecursionError) as exc:
        log_event(
            log,
            "ignoring the saved session file; the agent starts a new session",
            level=logging.WARNING,
            path=str(path),
            error=str(exc)[:500],
        )
        return SavedSession()


def save(path: Path, saved: SavedSession) -> None:
    replace_file(path, json.dumps(asdict(saved)).encode(), durable=True)


class BackgroundSaver:
    """Writes the latest SavedSession from a worker thread, so two fsyncs never stall the
    event loop (and every stream with it). Writes keep their order; a burst of changes
    while one is on its way becomes a single write of the newest state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: SavedSession | None = None
        self._task: asyncio.Task[None] | None = None

    def request(self, saved: SavedSession) -> None:
        """Save a copy of `saved` soon; returns at once (call on the event loop)."""
        self._pending = saved.copy()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=f"save-{self.path.name}")

    async def flush(self) -> None:
        """Until every requested save is on disk (or failed and was logged)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._pending is not None:
            saved, self._pending = self._pending, None
            try:
                await asyncio.to_thread(save, self.path, saved)
            except OSError as exc:
                log_event(log, "cannot save session", level=logging.ERROR, error=str(exc))
