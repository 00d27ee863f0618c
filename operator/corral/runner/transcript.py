"""Read an agent's conversation from the CLI's transcript on disk.

The CLI writes `$CLAUDE_CONFIG_DIR/projects/<project key of cwd>/<session id>.jsonl`;
reading the file (not a copy in memory) shows history from earlier pods of a Hybrid
session too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from claude_agent_sdk import project_key_for_directory

# Entry types that make up the conversation; the file also holds bookkeeping lines.
CONVERSATION_TYPES = frozenset({"user", "assistant"})


def transcript_path(config_dir: Path, cwd: Path, session_id: str) -> Path:
    return config_dir / "projects" / project_key_for_directory(cwd) / f"{session_id}.jsonl"


def read_transcript(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last `limit` user/assistant entries, oldest first ([] if there is no file)."""
    entries: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write
                if isinstance(entry, dict) and entry.get("type") in CONVERSATION_TYPES:
                    entries.append(
                        {
                            "type": entry["type"],
                            "uuid": entry.get("uuid"),
                            "timestamp": entry.get("timestamp"),
                            "message": entry.get("message"),
                        }
                    )
    except FileNotFoundError:
        return []
    return entries[-limit:] if limit else entries
