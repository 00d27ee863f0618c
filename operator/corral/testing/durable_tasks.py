"""Durable tasks in tests: a minute at which the CLI runs a one-shot task on time."""

from __future__ import annotations

from datetime import datetime, timedelta

from corral.runner.durable_schedule import ONE_SHOT_EARLY_MINUTE_MOD


def minute_run_on_time(minute: datetime) -> datetime:
    """`minute`, or the next one when the CLI would run a one-shot task due at it early (on
    :00 and :30, by up to 90 s): a test whose CLI must start before the task runs."""
    if minute.minute % ONE_SHOT_EARLY_MINUTE_MOD == 0:
        return minute + timedelta(minutes=1)
    return minute
