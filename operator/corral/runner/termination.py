"""The outcome of an Ephemeral run, as JSON that fits the kubelet's termination message.

The operator reads it back as `RunResult` (camelCase, like the status it lands in). The
kubelet keeps at most 4096 bytes, so the result text is cut until the whole document
fits: the output is always complete, valid JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from corral.api import runtime
from corral.api.v1alpha1 import RunResult, Usage, clamp_cost, clamp_tokens, clamp_turns

ELLIPSIS = "…"
# RunResult.text's own bound, in characters; the byte bound is applied when encoding.
TEXT_MAX_CHARS = 4096


def run_result(result: dict[str, Any] | None, failure: str | None = None) -> RunResult:
    """A RunResult from a runner `result` event, or from a failure before any result."""
    if result is None:
        return RunResult(subtype="error_runner", text=_cut(failure))
    usage = result.get("usage") or {}
    return RunResult(
        subtype=str(result.get("subtype") or "unknown")[:64],
        text=_cut(result.get("result") if isinstance(result.get("result"), str) else failure),
        num_turns=clamp_turns(int(result.get("num_turns") or 0)),
        total_cost_usd=clamp_cost(float(result.get("total_cost_usd") or 0.0)),
        usage=Usage(**{k: clamp_tokens(int(usage.get(k) or 0)) for k in Usage.model_fields}),
        session_id=result.get("session_id"),
    )


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:TEXT_MAX_CHARS]


def _encode(outcome: RunResult, text: str | None) -> bytes:
    body = outcome.model_copy(update={"text": text}).model_dump(by_alias=True, mode="json")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def encode_bounded(outcome: RunResult, limit: int = runtime.TERMINATION_MESSAGE_MAX_BYTES) -> bytes:
    """JSON of `outcome` in at most `limit` bytes, cutting the text (never the structure)."""
    text = outcome.text
    encoded = _encode(outcome, text)
    if len(encoded) <= limit or text is None:
        return encoded if len(encoded) <= limit else _encode(outcome, None)
    # Longest prefix that fits; JSON escaping makes byte length non-linear, so search.
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if len(_encode(outcome, text[:mid] + ELLIPSIS)) <= limit:
            low = mid
        else:
            high = mid - 1
    encoded = _encode(outcome, text[:low] + ELLIPSIS)
    return encoded if len(encoded) <= limit else _encode(outcome, None)


def write_termination_log(path: Path, outcome: RunResult) -> None:
    data = encode_bounded(outcome)
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        with contextlib.suppress(OSError):  # not every target (a pipe, /dev/stderr) syncs
            os.fsync(handle.fileno())


def succeeded(outcome: RunResult, is_error: bool) -> bool:
    return outcome.subtype == "success" and not is_error
