"""What a finished Ephemeral pod says about its run: success, or a failure with a reason.

The runner writes its result to the termination message (the pod holds no Kubernetes
credentials); the kubelet and the API server add why a pod died when the runner could not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from corral.api.v1alpha1 import RunResult
from corral.controller.pods import PodView, Terminated

# Runner result subtypes that end a run as a failure, with the condition reason they map to.
FAILED_SUBTYPES = {
    "error_max_turns": "MaxTurnsReached",
    "error_max_budget_usd": "MaxBudgetReached",
    "error_during_execution": "AgentError",
    "error_runner": "RunnerError",
}


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    reason: str
    message: str
    result: RunResult | None


# A termination message comes from inside the pod (the runner, or the log tail the kubelet
# copies when the container failed): untrusted. What reaches status and Events is one line,
# bounded, printable, with anything that looks like a credential masked.
DETAIL_MAX_CHARS = 256
TAIL_MAX_CHARS = 16384
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_SECRETS = (
    # Anthropic keys, e.g. sk-ant-api03-...
    re.compile(r"sk-ant-[A-Za-z0-9_-]*"),
    # "Bearer <token>" (a token-like word after it, not "basic usage").
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/-]{8,}=*"),
    # "x-api-key: <key>", "api_key=<key>", "password=...", "Authorization: <scheme> <x>".
    re.compile(
        r"(?i)((?:api[_-]?key|token|secret|password|authorization)"
        r"[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?)[^\s\"',;]+"
    ),
    # Long unbroken runs of token characters (JWTs, hex or base64 keys).
    re.compile(r"[A-Za-z0-9_+/=.-]{40,}"),
)
REDACTED = "[redacted]"


def scrub(text: str, limit: int = DETAIL_MAX_CHARS) -> str:
    """`text` safe for status and Events: printable, credentials masked, at most `limit`."""
    text = _CONTROL.sub(" ", text)
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + REDACTED, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_line(message: str) -> str:
    """The last non-blank line of a termination message, scrubbed; for a runner's JSON
    result, the last line of its text."""
    message = message[-TAIL_MAX_CHARS:]  # the kubelet keeps 4 KiB; never read more
    result = parse_result(message) if message.lstrip().startswith("{") else None
    if result is not None:
        message = result.text or result.subtype
    lines = [line for line in message.splitlines() if line.strip()]
    return scrub(lines[-1]) if lines else ""


def termination_detail(terminated: Terminated, memory_limit: str) -> str:
    """Why a container ended, for a human: OOMKilled names the limit, an error its last
    log line."""
    if terminated.reason == "OOMKilled":
        return (
            f"OOMKilled: the runner used more than its memory limit "
            f"(spec.resources.memory {memory_limit}); raise the limit"
        )
    reason = scrub(terminated.reason, 64) or "Terminated"
    detail = f"{reason} (exit code {terminated.exit_code})"
    line = last_line(terminated.message)
    return f"{detail}: {line}" if line else detail


def parse_result(message: str) -> RunResult | None:
    """The runner's result in a termination message; None for anything else (including
    JSON nested deep enough to exhaust the parser's recursion, or numbers out of bounds)."""
    try:
        return RunResult.model_validate(json.loads(message))
    except (ValueError, ValidationError, RecursionError):
        return None


def outcome_of(pod: PodView, memory_limit: str = "") -> Outcome:
    """Classify a pod in phase Succeeded or Failed (`memory_limit`: the spec's, for the
    message of an OOM kill)."""
    terminated = pod.terminated
    result = parse_result(terminated.message) if terminated and terminated.message else None
    if pod.reason == "Evicted":
        return Outcome(False, "Evicted", pod.message or "the pod was evicted", result)
    if pod.reason == "DeadlineExceeded":
        return Outcome(
            False,
            "DeadlineExceeded",
            "the run took longer than spec.activeDeadlineSeconds",
            result,
        )
    if terminated and terminated.reason == "OOMKilled":
        limit = f" ({memory_limit})" if memory_limit else ""
        return Outcome(
            False,
            "OOMKilled",
            f"the runner was killed for using more memory than spec.resources.memory{limit}; "
            "raise the limit or shorten the task",
            result,
        )
    if pod.phase == "Succeeded" and (result is None or result.subtype == "success"):
        return Outcome(True, "Succeeded", "the run finished", result)
    if result is not None and result.subtype in FAILED_SUBTYPES:
        reason = FAILED_SUBTYPES[result.subtype]
        return Outcome(False, reason, f"the run ended with {result.subtype}", result)
    code = terminated.exit_code if terminated else None
    detail = f" (exit code {code})" if code is not None else ""
    line = last_line(terminated.message) if terminated and result is None else ""
    tail = f": {line}" if line else ""
    return Outcome(False, "RunnerFailed", f"the runner exited with an error{detail}{tail}", result)
