"""What a finished Ephemeral pod says about its run: success, or a failure with a reason.

The runner writes its result to the termination message (the pod holds no Kubernetes
credentials); the kubelet and the API server add why a pod died when the runner could not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from corral.api.v1alpha1 import RunResult
from corral.controller.pods import PodView

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


def parse_result(message: str) -> RunResult | None:
    try:
        return RunResult.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def outcome_of(pod: PodView) -> Outcome:
    """Classify a pod in phase Succeeded or Failed."""
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
        return Outcome(
            False,
            "OOMKilled",
            "the runner was killed for using more memory than spec.resources.memory; "
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
    return Outcome(False, "RunnerFailed", f"the runner exited with an error{detail}", result)
