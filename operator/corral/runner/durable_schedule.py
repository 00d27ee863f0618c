"""When the agent's CLI fires its next durable task: the CLI's `.claude/scheduled_tasks.json`.

`CronCreate` with `durable: true` keeps a task in that file of the agent's working
directory (on a Hybrid session's volume), and a CLI running in that directory fires it. A
CLI started after a one-shot task's minute does not run it: it drops the task and asks, in
a turn of its own, whether to run it now (measured with CLI 2.1.327, docs/runner.md). So a
sleeping session must be woken before the task fires, and the runner tells the operator
when that is.

The CLI does not fire a task at its cron minute but at a time of its own, which this
module computes as CLI 2.1.327 does (docs/runner.md, "When the CLI fires a durable task"):
- a one-shot task at the first minute after its creation that its cron names, except one
  due on :00 or :30, which fires up to 90 s early by a fraction read from its id;
- a recurring task at its cron's next minute after its last run (or its creation), up to
  half a period late (at most 30 minutes) by the same fraction; a `*/N * * * *` task of a
  5-minute period 15 s before the period since its last run ends.

The agent can write the file: it is read bounded, and whatever does not parse is left out.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from corral.runner.bounded_file import read_bounded
from corral.runner.jsonlog import log_event

log = logging.getLogger(__name__)

SCHEDULE_FILE = Path(".claude") / "scheduled_tasks.json"
MAX_SCHEDULE_BYTES = 256 * 1024
MAX_TASKS = 1000
MAX_CRON_LENGTH = 200

# The CLI's scheduling constants (2.1.327).
ONE_SHOT_EARLY_MAX = timedelta(seconds=90)
ONE_SHOT_EARLY_MINUTE_MOD = 30
RECURRING_LATE_FRACTION = 0.5
RECURRING_LATE_MAX = timedelta(minutes=30)
FIVE_MINUTES = timedelta(minutes=5)
FIVE_MINUTE_LEAD = timedelta(seconds=15)
EVERY_N_MINUTES = re.compile(r"\*/\d+ \* \* \* \*")
# How the CLI reads a fraction from an id: JavaScript's parseInt(id[:8], 16).
HEX_PREFIX = re.compile(r"\s*([+-]?)(?:0[xX])?([0-9a-fA-F]*)")


@dataclass(frozen=True)
class DurableTask:
    """What the CLI schedules a durable task by (its prompt is not read)."""

    id: str
    cron: str
    created_at: datetime
    last_fired_at: datetime | None
    recurring: bool


def next_fire_time(cwd: Path, now: datetime) -> datetime | None:
    """When the CLI in `cwd` fires its next durable task after `now` (aware); None without
    one. Tasks it fires at once (an overdue recurring one) or never (a missed one-shot
    one) are no reason to wake."""
    try:
        data = read_bounded(cwd / SCHEDULE_FILE, MAX_SCHEDULE_BYTES)
    except (ValueError, OSError) as error:
        log_event(log, "durable schedule not read", error=type(error).__name__)
        return None
    if data is None:
        return None
    return next((when for when in fire_times(data, os.environ.get("TZ")) if when > now), None)


@functools.lru_cache(maxsize=4)
def fire_times(data: bytes, tz: str | None) -> tuple[datetime, ...]:
    """When the CLI fires each task of the file's content `data`, in order; computed once
    per content and `TZ` (the runner reads the file after every turn, and 1,000 crons the
    agent wrote can take a CPU-second)."""
    try:
        entries = json.loads(data)["tasks"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        # Its content is the agent's: only what kind of problem it has is logged.
        log_event(log, "durable schedule not read", error=type(error).__name__)
        return ()
    if not isinstance(entries, list):
        return ()
    tasks = [task for task in map(parse_task, entries[:MAX_TASKS]) if task is not None]
    zone = local_zone()
    return tuple(sorted(when for when in (fire_time(t, zone) for t in tasks) if when is not None))


def parse_task(entry: Any) -> DurableTask | None:
    """A task as the CLI reads it (an id, a cron, a prompt and a creation time in epoch
    milliseconds); None for an entry the CLI skips too."""
    if not isinstance(entry, dict):
        return None
    id_, cron, prompt = entry.get("id"), entry.get("cron"), entry.get("prompt")
    created, fired = _epoch_ms(entry.get("createdAt")), _epoch_ms(entry.get("lastFiredAt"))
    if not (isinstance(id_, str) and isinstance(cron, str) and isinstance(prompt, str)):
        return None
    if created is None or len(cron) > MAX_CRON_LENGTH or len(cron.split()) != 5:
        return None
    return DurableTask(id_, cron, created, fired, entry.get("recurring") is True)


def _epoch_ms(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def fire_time(task: DurableTask, zone: tzinfo | None = None) -> datetime | None:
    """When the CLI fires `task` (past or not), its cron read in `zone` (the local time
    zone by default); None when its cron never fires or does not parse."""
    zone = zone or local_zone()
    if task.recurring:
        return _recurring_fire_time(task, zone)
    return _one_shot_fire_time(task, zone)


def _recurring_fire_time(task: DurableTask, zone: tzinfo) -> datetime | None:
    base = task.last_fired_at or task.created_at
    due = cron_after(task.cron, base, zone)
    following = cron_after(task.cron, due, zone) if due is not None else None
    if due is None or following is None:
        return due
    period = following - due
    if EVERY_N_MINUTES.fullmatch(task.cron) and period == FIVE_MINUTES:
        return base + period - FIVE_MINUTE_LEAD
    late = id_fraction(task.id) * RECURRING_LATE_FRACTION * period
    return due + min(late, RECURRING_LATE_MAX)


def _one_shot_fire_time(task: DurableTask, zone: tzinfo) -> datetime | None:
    due = cron_after(task.cron, task.created_at, zone)
    if due is None or due.minute % ONE_SHOT_EARLY_MINUTE_MOD:
        return due
    return max(due - id_fraction(task.id) * ONE_SHOT_EARLY_MAX, task.created_at)


def id_fraction(task_id: str) -> float:
    """The fraction the CLI reads from an id's first eight characters as hex: in [0, 1),
    negative for an id that begins with "-" (as JavaScript's parseInt reads it)."""
    match = HEX_PREFIX.match(task_id[:8])
    digits = match.group(2) if match else ""
    if not digits:
        return 0.0
    value = int(digits, 16) / 2**32
    return -value if match and match.group(1) == "-" else value


def cron_after(cron: str, after: datetime, zone: tzinfo | None = None) -> datetime | None:
    """The first minute after the one holding `after` that the 5-field `cron` names, read
    in `zone` (the local time zone by default); None when it does not parse or never
    fires."""
    from cronsim import CronSim, CronSimError  # only when there is a schedule

    try:
        return next(iter(CronSim(cron, after.astimezone(zone or local_zone()))))
    except (CronSimError, StopIteration):
        return None


def local_zone() -> tzinfo:
    """The runner's local time zone, the CLI's: `TZ` when it names a zone, else
    /etc/localtime, with its daylight saving rules (a cron at 9:00 stays at 9:00 across a
    change); else the current UTC offset."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as localtime:
            return ZoneInfo.from_file(localtime, key="localtime")
    except (OSError, ValueError, KeyError):  # KeyError: no such zone
        offset = datetime.now().astimezone().tzinfo
        return offset if offset is not None else UTC
