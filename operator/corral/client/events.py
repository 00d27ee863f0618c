"""Session events as the runner sends them (docs/runner.md "Events"), and the SSE framing.

Events stay plain dicts (`event["type"]` is `text_delta`, `assistant`, `tool_result`,
`api_retry`, `error`, `result`, ...): new event types from a newer runner pass through.
The gateway adds `waking` (a `: waking` SSE comment, or a WebSocket event) while it wakes
a sleeping session.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]
WAKING: Event = {"type": "waking"}
# One SSE event is a line; far longer than any runner event (tool previews are 4 KiB).
MAX_EVENT_BYTES = 1024 * 1024


class SseParser:
    """Feed it lines of a `text/event-stream`; it returns the events they complete."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._size = 0

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return dict(WAKING) if line[1:].strip() == "waking" else None
        name, _, value = line.partition(":")
        if name == "data":
            value = value.removeprefix(" ")
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                self._data, self._size = [], 0
                return {"type": "error", "message": "an event over 1 MiB was skipped"}
            self._data.append(value)
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            return None
        text = "\n".join(self._data)
        self._data, self._size = [], 0
        try:
            event = json.loads(text)
        except ValueError:
            return {"type": "error", "message": f"not JSON in the stream: {text[:200]!r}"}
        return event if isinstance(event, dict) else None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
    final = parser.feed("")
    if final is not None:
        yield final


def ends_turn(event: Event) -> bool:
    """The last event of one message: its result, or an error that refused it."""
    kind = event.get("type")
    return kind == "result" or (kind == "error" and "status" in event)


@dataclass
class Reply:
    """What one message came to: the streamed text and its `result` event (or error)."""

    text: str = ""
    result: Event = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.result.get("type") == "result"
            and self.result.get("subtype") == "success"
            and not self.result.get("is_error")
        )

    @property
    def subtype(self) -> str:
        return str(self.result.get("subtype") or self.result.get("type") or "no result")

    def add(self, event: Event) -> None:
        self.events.append(event)
        kind = event.get("type")
        if kind == "text_delta":
            self.text += str(event.get("text", ""))
        elif ends_turn(event):
            self.result = event
            if kind == "result" and not self.text and isinstance(event.get("result"), str):
                self.text = event["result"]
