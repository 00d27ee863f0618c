"""What an agent keeps across pods of a Hybrid session: its SDK session id and totals.

One small JSON file per agent on the session's volume, replaced atomically so a SIGKILL
mid-write leaves the previous version rather than a torn file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corral.runner.events import USAGE_KEYS


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


def load_saved(path: Path) -> SavedSession:
    """The saved state, or a fresh one when the file is missing or damaged."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SavedSession()
    if not isinstance(raw, dict):
        return SavedSession()
    usage = raw.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    session_id = raw.get("session_id")
    return SavedSession(
        session_id=session_id if isinstance(session_id, str) and session_id else None,
        num_turns=int(raw.get("num_turns") or 0),
        messages=int(raw.get("messages") or 0),
        total_cost_usd=float(raw.get("total_cost_usd") or 0.0),
        cli_cost=float(raw.get("cli_cost") or 0.0),
        usage={key: int(usage.get(key) or 0) for key in USAGE_KEYS},
    )


def save(path: Path, saved: SavedSession) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(asdict(saved), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
