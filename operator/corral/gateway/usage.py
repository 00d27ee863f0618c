"""Token usage out of Messages API responses: streamed (SSE) or plain JSON.

Streams are read as they pass through the proxy, chunk by chunk: `message_start` carries the
input and cache counts (and the model), `message_delta` the output count so far; later
values replace earlier ones (the API reports running totals). Everything here is pure and
bounded: an event larger than the limit is skipped instead of growing memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

MAX_EVENT_BYTES = 1024 * 1024
MAX_JSON_BYTES = 16 * 1024 * 1024
_METERED_EVENTS = (b'"message_start"', b'"message_delta"')
_CONTENT_DELTA = b'"content_block_delta"'
# The shortest content delta event's own bytes: {"type":"content_block_delta","index":0,
# "delta":{"type":"text_delta","text":""}} is 79; less is taken off, to err high.
DELTA_FRAMING_BYTES = 64


TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # Not tokens: searches the model ran (usage.server_tool_use), priced per search.
    web_search_requests: int = 0
    # Of cache_creation_input_tokens, those kept an hour (usage.cache_creation), priced
    # higher than the 5-minute ones; not in TOKEN_FIELDS, as they are counted there already.
    cache_creation_1h_input_tokens: int = 0

    def update(self, usage: Any) -> None:
        """Take every count `usage` (an API usage object) states; ignore the rest."""
        if not isinstance(usage, dict):
            return
        server_tools = usage.get("server_tool_use")
        cache_writes = usage.get("cache_creation")
        counts = {name: usage.get(name) for name in TOKEN_FIELDS}
        if isinstance(server_tools, dict):
            counts["web_search_requests"] = server_tools.get("web_search_requests")
        if isinstance(cache_writes, dict):
            counts["cache_creation_1h_input_tokens"] = cache_writes.get("ephemeral_1h_input_tokens")
        for name, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, name, value)

    def add(self, other: TokenUsage) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    @property
    def total(self) -> int:
        """Tokens of every kind (what tokens-per-minute counts)."""
        return sum(getattr(self, name) for name in TOKEN_FIELDS)

    @property
    def prompt_tokens(self) -> int:
        """The call's input, cache reads and writes included (what a long-prompt premium
        is decided by)."""
        return self.total - self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass
class ResponseUsage:
    """What one response said it used; `seen` is False when it reported nothing."""

    usage: TokenUsage
    model: str | None = None
    seen: bool = False


class SseUsageReader:
    """Feed it the bytes of an SSE body as they pass; read `.result` at the end.

    An event over `max_event_bytes` is skipped (not held), and the count goes on with the
    next one. `output_estimate` is what the stream's content deltas amount to, for a reply
    that ended before its `message_delta` stated the output (a client that hung up, an
    upstream that broke off): about four bytes a token, framing included, so it errs high.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.result = ResponseUsage(TokenUsage())
        self.max_event_bytes = max_event_bytes
        self.output_estimate = 0
        self.delta_seen = False  # a message_delta stated the output
        self._partial = bytearray()  # an incomplete line
        self._data: list[bytes] = []  # data lines of the current event
        self._data_bytes = 0
        self._skip_line = False  # the rest of an oversized line
        self._skip_event = False  # the rest of an oversized event

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        start = 0
        while True:
            end = self._partial.find(b"\n", start)
            if end < 0:
                break
            if self._skip_line:
                self._skip_line = False
            else:
                self._line(bytes(self._partial[start:end]).rstrip(b"\r"))
            start = end + 1
        del self._partial[:start]
        if len(self._partial) + self._data_bytes > self.max_event_bytes:
            self._partial.clear()
            self._skip_line = True
            self._oversized()

    def _oversized(self) -> None:
        self._data.clear()
        self._data_bytes = 0
        self._skip_event = True

    def _line(self, line: bytes) -> None:
        if not line:
            if self._skip_event:
                self._skip_event = False
            else:
                self._dispatch()
        elif line.startswith(b"data:") and not self._skip_event:
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            self._data_bytes += len(value)
            if self._data_bytes > self.max_event_bytes:
                self._oversized()

    def _dispatch(self) -> None:
        data, self._data, self._data_bytes = b"\n".join(self._data), [], 0
        if not any(marker in data for marker in _METERED_EVENTS):
            if _CONTENT_DELTA in data:  # not parsed: most events are these
                self.output_estimate += max(1, -(-(len(data) - DELTA_FRAMING_BYTES) // 4))
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._take(message.get("usage"), message.get("model"))
        elif event.get("type") == "message_delta":
            self._take(event.get("usage"), None)
            self.delta_seen = self.delta_seen or isinstance(event.get("usage"), dict)

    def _take(self, usage: Any, model: Any) -> None:
        if isinstance(usage, dict):
            self.result.usage.update(usage)
            self.result.seen = True
        if isinstance(model, str) and model:
            self.result.model = model

    def final(self) -> ResponseUsage:
        """The usage to meter: as stated, or, for a stream cut before its message_delta,
        the output at least as large as its content deltas."""
        if self.delta_seen or not self.result.seen:
            return self.result
        usage = self.result.usage
        usage.output_tokens = max(usage.output_tokens, self.output_estimate)
        return self.result


def usage_of_json(body: bytes) -> ResponseUsage:
    """The usage of a non-streamed Messages response (nothing when it is not one)."""
    result = ResponseUsage(TokenUsage())
    if len(body) > MAX_JSON_BYTES:
        return result
    try:
        parsed = json.loads(body)
    except ValueError:
        return result
    if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
        result.usage.update(parsed["usage"])
        result.seen = True
        if isinstance(parsed.get("model"), str):
            result.model = parsed["model"]
    return result
