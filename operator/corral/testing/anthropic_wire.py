"""Pure rendering of a scripted reply into Messages API shapes (JSON body or SSE events)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from corral.testing.anthropic_script import ErrorStep, TextStep, ToolUseStep, error_type_for

# The model's text is cut into deltas of this many characters so streams have several.
DELTA_CHARS = 16


@dataclass(frozen=True)
class Reply:
    """A reply resolved against its request: what blocks to send and what usage to claim."""

    message_id: str
    model: str
    blocks: list[dict[str, Any]]
    stop_reason: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    web_search_requests: int = 0
    cache_creation_1h_input_tokens: int = 0


def last_user_text(body: dict[str, Any]) -> str:
    """Text of the newest user message's text blocks (tool results are not text)."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                b.get("text", "")
                for b in content
                if isinstance(b, dict)
                and b.get("type") == "text"
                # The CLI adds reminder blocks to user turns; they are not what was said.
                and not str(b.get("text", "")).startswith("<system-reminder>")
            ]
            if texts:
                return "\n".join(texts)
    return ""


def estimate_tokens(payload: Any) -> int:
    """About four characters per token, like the real tokenizer on English text."""
    return max(1, len(json.dumps(payload, ensure_ascii=False)) // 4)


def resolve(step: TextStep | ToolUseStep, body: dict[str, Any]) -> Reply:
    blocks: list[dict[str, Any]] = []
    if isinstance(step, TextStep):
        blocks.append(
            {"type": "text", "text": step.text.replace("{last_user}", last_user_text(body))}
        )
        stop_reason = "end_turn"
    else:
        if step.text:
            blocks.append({"type": "text", "text": step.text})
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": step.name,
                "input": step.input,
            }
        )
        stop_reason = "tool_use"
    return Reply(
        message_id=f"msg_{uuid.uuid4().hex[:24]}",
        model=str(body.get("model") or "claude-fake"),
        blocks=blocks,
        stop_reason=stop_reason,
        input_tokens=(
            step.usage.input_tokens
            if step.usage.input_tokens is not None
            else estimate_tokens(body.get("messages", []))
        ),
        output_tokens=(
            step.usage.output_tokens
            if step.usage.output_tokens is not None
            else estimate_tokens(blocks)
        ),
        cache_read_input_tokens=step.usage.cache_read_input_tokens,
        cache_creation_input_tokens=step.usage.cache_creation_input_tokens,
        web_search_requests=step.usage.web_search_requests,
        cache_creation_1h_input_tokens=step.usage.cache_creation_1h_input_tokens,
    )


def _usage(reply: Reply, output_tokens: int, final: bool = True) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": reply.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": reply.cache_creation_input_tokens,
        "cache_read_input_tokens": reply.cache_read_input_tokens,
        # The writes by how long the cache keeps them, as the API states them.
        "cache_creation": {
            "ephemeral_5m_input_tokens": reply.cache_creation_input_tokens
            - reply.cache_creation_1h_input_tokens,
            "ephemeral_1h_input_tokens": reply.cache_creation_1h_input_tokens,
        },
    }
    if final and reply.web_search_requests:  # known once the reply is done, as in the API
        usage["server_tool_use"] = {"web_search_requests": reply.web_search_requests}
    return usage


def message_json(reply: Reply) -> dict[str, Any]:
    """The non-streaming response body."""
    return {
        "id": reply.message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": reply.blocks,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": _usage(reply, reply.output_tokens),
    }


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "text":
        text = block["text"]
        start: dict[str, Any] = {"type": "text", "text": ""}
        chunks = [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)] or [""]
        deltas = [{"type": "text_delta", "text": c} for c in chunks]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        encoded = json.dumps(block["input"])
        # Split the JSON at arbitrary points, as the real API does.
        deltas = [
            {"type": "input_json_delta", "partial_json": encoded[i : i + DELTA_CHARS]}
            for i in range(0, len(encoded), DELTA_CHARS)
        ]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def stream_events(reply: Reply) -> list[dict[str, Any]]:
    """The SSE events of a streamed reply, in order; each has its `type` as event name."""
    start = message_json(reply) | {
        "content": [],
        "stop_reason": None,
        "usage": _usage(reply, 1, final=False),
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(reply.blocks):
        events.extend(_block_events(index, block))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {
                "output_tokens": reply.output_tokens,
                **(
                    {"server_tool_use": {"web_search_requests": reply.web_search_requests}}
                    if reply.web_search_requests
                    else {}
                ),
            },
        }
    )
    events.append({"type": "message_stop"})
    return events


def sse_frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def error_json(step: ErrorStep) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type_for(step), "message": step.message}}
