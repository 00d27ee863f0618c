"""The events of one turn on their way to the one client reading them, bounded.

The agent publishes without ever waiting. A reader that falls behind (a slow or stalled
client) loses the oldest events beyond `capacity` events or `max_bytes` of their JSON, and
is told how many with one `events_dropped` event; the last event, the turn's `result`, is
never dropped because a drop always takes the oldest. A turn nobody reads (Ephemeral,
opening prompts, `stream: false`, a client that went away) keeps nothing: its result is on
the Turn.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

from corral.runner.events import Event

# At most this many events wait for a reader: a long reply is a few thousand text deltas,
# each a few bytes; tool results are cut to a 4 KiB preview before they get here.
DEFAULT_CAPACITY = 2000
# And at most this much of them: an `assistant` event holds a whole model reply, tool
# inputs included (a file the agent writes), up to its output limit of a few hundred KiB.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


# What a text delta weighs beyond its text: its type and tags, as JSON.
TEXT_DELTA_OVERHEAD = 80


def event_size(event: Event) -> int:
    """About what the event weighs on the wire (and, within a small factor, in memory).
    Text deltas, most of a turn's events and each a few bytes, are not encoded for it:
    that would cost every streamed token a JSON encoding more."""
    if event.get("type") == "text_delta":
        return len(event.get("text") or "") + TEXT_DELTA_OVERHEAD
    return len(json.dumps(event, default=str))


class EventBuffer:
    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        watched: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 (the result)")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._events: deque[tuple[Event, int]] = deque()
        self.bytes = 0
        self._dropped = 0
        self._arrived = asyncio.Event()
        self._closed = not watched

    def __len__(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: Event) -> None:
        """Never blocks; when full, the oldest waiting event makes room."""
        if self._closed:
            return
        size = event_size(event)
        # The newest always stays, however big: it may be the result.
        while self._events and (
            len(self._events) >= self.capacity or self.bytes + size > self.max_bytes
        ):
            _, dropped_size = self._events.popleft()
            self.bytes -= dropped_size
            self._dropped += 1
        self._events.append((event, size))
        self.bytes += size
        self._arrived.set()

    def close(self) -> None:
        """The reader is gone: drop what waits and keep nothing more."""
        self._closed = True
        self._events.clear()
        self.bytes = 0

    async def get(self, wait: float) -> Event | None:
        """The next event, an `events_dropped` notice first if some were lost, or None
        when nothing came within `wait` seconds."""
        if not self._events:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return None
            if not self._events:  # closed meanwhile
                return None
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return {"type": "events_dropped", "count": count}
        event, size = self._events.popleft()
        self.bytes -= size
        return event
