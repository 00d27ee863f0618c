"""KEP-1623 conditions: `lastTransitionTime` moves only when `status` changes."""

from __future__ import annotations

from corral.api.v1alpha1 import Condition, ConditionStatus

READY = "Ready"
POD_READY = "PodReady"
CREDENTIALS = "CredentialsReady"
# False while a child's name is taken by an object that is not the session's, or its
# volume is larger than the operator allows; absent otherwise.
CHILDREN = "ChildrenReady"
# False while the spec cannot be given to a pod (too large for its annotation).
SPEC_ACCEPTED = "SpecAccepted"
# Hybrid only, False while runners have nowhere to report activity (no activity URL).
ACTIVITY_REPORTS = "ActivityReports"
IDLE = "Idle"
# Written by the gateway's model proxy: True while it refuses model calls for a budget.
BUDGET_EXCEEDED = "BudgetExceeded"
COMPLETE = "Complete"
FAILED = "Failed"


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """A new list with `type_` set; the others untouched, order kept (new ones appended)."""
    value = {
        True: ConditionStatus.TRUE,
        False: ConditionStatus.FALSE,
        None: ConditionStatus.UNKNOWN,
    }[status]
    result: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            result.append(condition)
            continue
        found = True
        if (
            condition.status == value
            and condition.reason == reason
            and condition.message == message
            and condition.observed_generation == generation
        ):
            # Unchanged, the common case of a reconcile: no new (validated) model.
            result.append(condition)
            continue
        moved = condition.status != value
        result.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=now if moved else condition.last_transition_time,
            )
        )
    if not found:
        result.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=now,
            )
        )
    return result


def remove_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
