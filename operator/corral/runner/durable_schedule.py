"""When the agent's durable schedule fires next: the CLI's `.claude/scheduled_tasks.json`.

`CronCreate` with `durable: true` keeps a task in that file of the agent's working
directory (on a Hybrid session's volume), and a CLI running in that directory fires it at
its minute. A CLI started after the minute does not run it: it drops the task and asks, in
a turn of its own, whether to run it now (measured with CLI 2.1.327, docs/runner.md). So a
sleeping session must be woken before the minute, and the runner tells the operator when
that is. The agent can write the file: it is read bounded, and whatever does not parse is
left out.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.runner.bounded_file import read_bounded
from corral.runner.jsonlog import log_event

log = logging.getLogger(__name__)

SCHEDULE_FILE = Path(".claude") / "scheduled_tasks.json"
MAX_SCHEDULE_BYTES = 256 * 1024
MAX_TASKS = 1000
MAX_CRON_LENGTH = 200


def next_fire_time(cwd: Path, now: datetime) -> datetime | None:
    """The earliest minute after `now` (aware) at which a durable task in `cwd` fires, in
    the runner's local time zone, the CLI's; None without one."""
    try:
        data = read_bounded(cwd / SCHEDULE_FILE, MAX_SCHEDULE_BYTES)
        tasks = json.loads(data)["tasks"] if data is not None else []
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as error:
        # Its content is the agent's: only what kind of problem it has is logged.
        log_event(log, "durable schedule not read", error=type(error).__name__)
        return None
    if not isinstance(tasks, list):
        return None
    crons = [_cron_of(task) for task in tasks[:MAX_TASKS]]
    return earliest([cron for cron in crons if cron is not None], now)


def _cron_of(task: Any) -> str | None:
    cron = task.get("cron") if isinstance(task, dict) else None
    return cron if isinstance(cron, str) and len(cron) <= MAX_CRON_LENGTH else None


def earliest(crons: list[str], now: datetime) -> datetime | None:
    """The first time after `now` that any of the 5-field `crons` names; a cron that does
    not parse (or never fires) is left out."""
    if not crons:
        return None
    from cronsim import CronSim, CronSimError  # only when there is a schedule

    local_now = now.astimezone()
    found = []
    for cron in crons:
        try:
            found.append(next(iter(CronSim(cron, local_now))))
        except (CronSimError, StopIteration):
            continue
    return min(found) if found else None
