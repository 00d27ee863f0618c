"""Pure translation of SDK messages into the runner's wire events (one JSON object each).

Clients see a small, stable vocabulary instead of the SDK's dataclasses:
`text_delta`, `assistant`, `tool_result`, `api_retry`, `rate_limit`, `system`, `result`,
and the runner's own `error`. Every event has a `type`; the runner adds `agent` and `turn`.
"""

from __future__ import annotations

from typing import Any

from corral.runner.sdk import (
    AssistantMessage,
    Message,
    RateLimitEvent,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

Event = dict[str, Any]
# Tool output can be huge (a `cat` of a log); clients get a preview, the transcript has it all.
TOOL_RESULT_PREVIEW_CHARS = 4096
USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def token_kind(key: str) -> str:
    """`cache_read_input_tokens` -> `cache_read`: the metric label for a usage key."""
    return key.removesuffix("_tokens").removesuffix("_input")


def usage_counts(usage: dict[str, Any] | None) -> dict[str, int]:
    """The four token counters, zero when absent (the CLI adds keys of its own)."""
    usage = usage or {}
    return {key: int(usage.get(key) or 0) for key in USAGE_KEYS}


def _preview(content: Any) -> str:
    if isinstance(content, list):
        content = "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    text = "" if content is None else str(content)
    return text[:TOOL_RESULT_PREVIEW_CHARS]


def result_event(message: ResultMessage) -> Event:
    return {
        "type": "result",
        "subtype": message.subtype,
        "is_error": message.is_error,
        "result": message.result,
        "num_turns": message.num_turns,
        "total_cost_usd": message.total_cost_usd or 0.0,
        "usage": usage_counts(message.usage),
        "session_id": message.session_id,
        "duration_ms": message.duration_ms,
        "stop_reason": message.stop_reason,
        "terminal_reason": message.terminal_reason,
        "api_error_status": message.api_error_status,
        "errors": message.errors or [],
    }


def _assistant_event(message: AssistantMessage) -> Event | None:
    content: list[Event] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    if not content:
        return None
    return {
        "type": "assistant",
        "content": content,
        "model": message.model,
        "error": message.error,
        "parent_tool_use_id": message.parent_tool_use_id,
    }


def _user_events(message: UserMessage) -> list[Event]:
    if isinstance(message.content, str):
        return []
    return [
        {
            "type": "tool_result",
            "tool_use_id": block.tool_use_id,
            "is_error": bool(block.is_error),
            "content": _preview(block.content),
        }
        for block in message.content
        if isinstance(block, ToolResultBlock)
    ]


def _system_event(message: SystemMessage) -> Event | None:
    data = message.data
    if message.subtype == "api_retry":
        return {
            "type": "api_retry",
            "status": data.get("error_status"),
            "error": data.get("error"),
            "attempt": data.get("attempt"),
            "max_retries": data.get("max_retries"),
            "retry_delay_ms": data.get("retry_delay_ms"),
        }
    if message.subtype == "init":
        return {
            "type": "system",
            "subtype": "init",
            "session_id": data.get("session_id"),
            "model": data.get("model"),
            "cli_version": data.get("claude_code_version"),
        }
    return None  # status pings and hook chatter are not worth a client's attention


def _stream_event(message: StreamEvent) -> Event | None:
    event = message.event
    if message.parent_tool_use_id is not None or event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta") or {}
    if delta.get("type") != "text_delta":
        return None
    return {"type": "text_delta", "text": delta.get("text", "")}


def to_events(message: Message) -> list[Event]:
    """Zero or more wire events for one SDK message."""
    event: Event | None = None
    if isinstance(message, ResultMessage):
        event = result_event(message)
    elif isinstance(message, AssistantMessage):
        event = _assistant_event(message)
    elif isinstance(message, UserMessage):
        return _user_events(message)
    elif isinstance(message, SystemMessage):
        event = _system_event(message)
    elif isinstance(message, StreamEvent):
        event = _stream_event(message)
    elif isinstance(message, RateLimitEvent):
        info = message.rate_limit_info
        event = {
            "type": "rate_limit",
            "status": info.status,
            "resets_at": info.resets_at,
            "rate_limit_type": info.rate_limit_type,
        }
    return [event] if event is not None else []


def tool_names(message: Message) -> list[str]:
    """Tools the model called in this message (for metrics)."""
    if not isinstance(message, AssistantMessage):
        return []
    return [b.name for b in message.content if isinstance(b, ToolUseBlock)]


def synthetic_result(subtype: str, message: str, session_id: str | None) -> Event:
    """A `result` the runner itself emits when the CLI could not (it crashed, say)."""
    return {
        "type": "result",
        "subtype": subtype,
        "is_error": True,
        "result": message,
        "num_turns": 0,
        "total_cost_usd": 0.0,
        "usage": usage_counts(None),
        "session_id": session_id,
        "duration_ms": 0,
        "stop_reason": None,
        "terminal_reason": subtype,
        "api_error_status": None,
        "errors": [message],
    }
