"""Read an agent's conversation from the CLI's transcript on disk.

The CLI writes `$CLAUDE_CONFIG_DIR/projects/<project key of cwd>/<session id>.jsonl`;
reading the file (not a copy in memory) shows history from earlier pods of a Hybrid
session too. The file grows with the session (tool output included), so it is read
backwards from its end, block by block, only as far as the entries asked for: a request
costs at most MAX_ANSWER_BYTES of lines plus one block, however long the session.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from corral.runner.sdk import project_key_for_directory

# Entry types that make up the conversation; the file also holds bookkeeping lines.
CONVERSATION_TYPES = frozenset({"user", "assistant"})
BLOCK_BYTES = 64 * 1024
# A line longer than this (a huge tool result or an image) is skipped, never held whole.
MAX_LINE_BYTES = 4 * 1024 * 1024
# Lines read for one answer; the read stops there (and says so) even before `limit`.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass
class TranscriptPage:
    entries: list[dict[str, Any]] = field(default_factory=list)
    # True when entries may be missing: a line over MAX_LINE_BYTES was skipped, or the
    # answer's byte budget ran out before `limit` entries were found.
    truncated: bool = False


def transcript_path(config_dir: Path, cwd: Path, session_id: str) -> Path:
    return config_dir / "projects" / project_key_for_directory(cwd) / f"{session_id}.jsonl"


class _PartialLine:
    """The end of a line whose start lies further back in the file, up to `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []  # in reverse order: the newest block's piece first
        self.size = 0
        self.oversized = False

    def prepend(self, piece: bytes) -> None:
        if self.oversized:
            return
        self.size += len(piece)
        if self.size > self.limit:
            self.oversized, self.parts = True, []
        else:
            self.parts.append(piece)

    def take(self) -> bytes | None:
        """The whole line (None if it was too long); resets for the next one."""
        line = None if self.oversized else b"".join(reversed(self.parts))
        self.parts, self.size, self.oversized = [], 0, False
        return line


def lines_backwards(
    handle: IO[bytes], max_line: int = MAX_LINE_BYTES, block: int = BLOCK_BYTES
) -> Iterator[bytes | None]:
    """The file's lines from last to first (without newlines); None for a line longer
    than `max_line`, whose bytes are dropped as they are read."""
    handle.seek(0, os.SEEK_END)
    position = handle.tell()
    partial = _PartialLine(max_line)
    while position > 0:
        size = min(block, position)
        position -= size
        handle.seek(position)
        pieces = handle.read(size).split(b"\n")
        # pieces[-1] ends the line in progress; pieces[1:-1] are whole lines; pieces[0]
        # is the end of a line that started before this block.
        partial.prepend(pieces[-1])
        if len(pieces) == 1:
            continue
        yield partial.take()
        for piece in reversed(pieces[1:-1]):
            yield None if len(piece) > max_line else piece
        partial.prepend(pieces[0])
    yield partial.take()


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None  # a line cut by a crash mid-write, or the empty tail after the last \n
    if not isinstance(entry, dict) or entry.get("type") not in CONVERSATION_TYPES:
        return None
    return {
        "type": entry["type"],
        "uuid": entry.get("uuid"),
        "timestamp": entry.get("timestamp"),
        "message": entry.get("message"),
    }


def read_transcript(
    path: Path,
    limit: int,
    *,
    max_bytes: int = MAX_ANSWER_BYTES,
    max_line: int = MAX_LINE_BYTES,
) -> TranscriptPage:
    """The last `limit` (>= 1) user/assistant entries, oldest first (none if no file)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    page = TranscriptPage()
    used = 0
    try:
        # Only a regular file: the agent can put a FIFO there (an open would block a
        # reader thread for good) or a device that never ends.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return TranscriptPage(truncated=True)
            for line in lines_backwards(handle, max_line):
                if line is None:
                    page.truncated = True
                    continue
                used += len(line)
                if used > max_bytes:
                    page.truncated = True
                    break
                entry = _entry(line)
                if entry is not None:
                    page.entries.append(entry)
                    if len(page.entries) >= limit:
                        break
    except FileNotFoundError:
        return TranscriptPage()
    page.entries.reverse()
    return page
