"""The agent's durable schedule, read from the file its CLI keeps (runner/durable_schedule)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.runner.durable_schedule import (
    MAX_SCHEDULE_BYTES,
    SCHEDULE_FILE,
    DurableTask,
    cron_after,
    fire_time,
    id_fraction,
    local_zone,
    next_fire_time,
    parse_task,
)

NOW = datetime(2026, 12, 7, 12, 6, 7, tzinfo=UTC)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


CREATED = ms(NOW - timedelta(minutes=1))


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads crons in the pod's local time, UTC unless the image says otherwise."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def write_schedule(cwd: Path, content: object) -> None:
    path = cwd / SCHEDULE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def task(cron: str, **fields: object) -> dict[str, object]:
    """A task as CLI 2.1.327 writes it for CronCreate with durable: true."""
    return {"id": "00000000", "cron": cron, "prompt": "p", "createdAt": CREATED} | fields


def test_the_next_task_the_cli_fires(tmp_path: Path) -> None:
    write_schedule(
        tmp_path,
        {
            "tasks": [
                task("0 9 * * *", id="3f2a9c1e", prompt="morning"),
                task("8 12 * * *", id="0b7d4e21", prompt="soon"),
                task("*/10 * * * *", id="00000000", recurring=True, lastFiredAt=CREATED),
            ]
        },
    )
    assert next_fire_time(tmp_path, NOW) == datetime(2026, 12, 7, 12, 8, tzinfo=UTC)


def test_no_file_or_no_tasks_is_no_schedule(tmp_path: Path) -> None:
    assert next_fire_time(tmp_path, NOW) is None
    write_schedule(tmp_path, {"tasks": []})
    assert next_fire_time(tmp_path, NOW) is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[" * 100_000,  # nesting past the parser's recursion limit
        ["tasks"],
        {"tasks": "0 9 * * *"},
        {"other": []},
        "x" * (MAX_SCHEDULE_BYTES + 1),
    ],
)
def test_a_file_that_is_not_a_schedule_is_no_schedule(tmp_path: Path, content: object) -> None:
    write_schedule(tmp_path, content)
    assert next_fire_time(tmp_path, NOW) is None


def test_tasks_the_cli_would_skip_are_left_out(tmp_path: Path) -> None:
    tasks: list[object] = [
        "0 9 * * *",
        {"cron": "10 12 * * *", "prompt": "p", "createdAt": CREATED},  # no id
        task("11 12 * * *", createdAt="yesterday"),
        task("12 12 * * *", createdAt=True),
        task("13 12 * * *", prompt=None),
        task(5),  # type: ignore[arg-type]
        task("every day"),
        task("0 14 12 * * *"),  # six fields: the CLI's crons have five
        task("0 0 30 2 *"),  # never
        task("0 " * 200 + "*"),  # too long
        task("30 13 * * *"),
    ]
    write_schedule(tmp_path, {"tasks": tasks})
    assert next_fire_time(tmp_path, NOW) == datetime(2026, 12, 7, 13, 30, tzinfo=UTC)


def test_a_fifo_in_its_place_is_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / SCHEDULE_FILE
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    assert next_fire_time(tmp_path, NOW) is None


def test_a_one_shot_task_whose_minute_passed_is_no_reason_to_wake(tmp_path: Path) -> None:
    """Its CLI was not running at its minute: the next one drops it (runner.md), so a
    wake tomorrow at that hour would only bring the question whether to run it."""
    yesterday = ms(NOW - timedelta(days=1))
    write_schedule(tmp_path, {"tasks": [task("8 12 * * *", createdAt=yesterday)]})
    assert next_fire_time(tmp_path, NOW) is None


def test_an_overdue_recurring_task_is_no_reason_to_wake(tmp_path: Path) -> None:
    """A CLI fires a recurring task whose time passed as soon as it runs."""
    last_week = ms(NOW - timedelta(days=7))
    write_schedule(
        tmp_path,
        {
            "tasks": [
                task("0 9 * * *", recurring=True, lastFiredAt=last_week),
                task("0 15 * * *", id="x", recurring=True),
            ]
        },
    )
    assert next_fire_time(tmp_path, NOW) == datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def one_shot(cron: str, task_id: str, created: datetime = NOW) -> DurableTask:
    return DurableTask(task_id, cron, created, None, recurring=False)


def recurring(cron: str, task_id: str, last: datetime | None = NOW) -> DurableTask:
    return DurableTask(task_id, cron, NOW - timedelta(days=1), last, recurring=True)


def test_a_one_shot_task_on_the_hour_or_half_hour_fires_early_by_its_id() -> None:
    assert fire_time(one_shot("0 13 * * *", "80000000")) == datetime(
        2026, 12, 7, 12, 59, 15, tzinfo=UTC
    )
    assert fire_time(one_shot("30 13 * * *", "40000000")) == datetime(
        2026, 12, 7, 13, 29, 37, 500000, tzinfo=UTC
    )
    # Other minutes, or an id that reads as 0, fire on the minute.
    assert fire_time(one_shot("7 13 * * *", "ffffffff")) == datetime(2026, 12, 7, 13, 7, tzinfo=UTC)
    assert fire_time(one_shot("0 13 * * *", "zz")) == datetime(2026, 12, 7, 13, 0, tzinfo=UTC)


def test_a_one_shot_task_fires_no_earlier_than_it_was_made() -> None:
    created = datetime(2026, 12, 7, 12, 59, 30, tzinfo=UTC)
    assert fire_time(one_shot("0 13 * * *", "ffffffff", created)) == created


def test_a_recurring_task_fires_late_by_its_id_within_half_a_period() -> None:
    hourly = recurring("0 * * * *", "80000000")
    assert fire_time(hourly) == datetime(2026, 12, 7, 13, 15, tzinfo=UTC)  # a quarter period
    every_two = recurring("*/2 * * * *", "40000000")
    assert fire_time(every_two) == datetime(2026, 12, 7, 12, 8, 15, tzinfo=UTC)


def test_a_recurring_task_fires_at_most_30_minutes_late() -> None:
    daily = recurring("0 9 * * *", "ffffffff")
    assert fire_time(daily) == datetime(2026, 12, 8, 9, 30, tzinfo=UTC)


def test_a_recurring_task_counts_from_its_creation_until_it_first_runs() -> None:
    created = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    never_run = DurableTask("00000000", "0 * * * *", created, None, recurring=True)
    assert fire_time(never_run) == datetime(2026, 12, 7, 11, 0, tzinfo=UTC)


def test_an_every_five_minutes_task_fires_15_s_before_its_period_ends() -> None:
    last = datetime(2026, 12, 7, 12, 3, 20, tzinfo=UTC)
    assert fire_time(recurring("*/5 * * * *", "ffffffff", last)) == datetime(
        2026, 12, 7, 12, 8, 5, tzinfo=UTC
    )
    # Written another way, the same period is late by its id as any other.
    assert fire_time(recurring("0-59/5 * * * *", "00000000", last)) == datetime(
        2026, 12, 7, 12, 5, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("task_id", "fraction"),
    [
        ("80000000", 0.5),
        ("80000000-extra", 0.5),
        ("abc-def0", 0xABC / 2**32),
        ("0x10", 16 / 2**32),
        (" ff", 255 / 2**32),
        ("-8000000", -(0x8000000) / 2**32),
        ("xyz", 0.0),
        ("", 0.0),
    ],
)
def test_the_fraction_an_id_reads_as(task_id: str, fraction: float) -> None:
    """As JavaScript's parseInt(id.slice(0, 8), 16) / 2**32 reads it, NaN as 0."""
    assert id_fraction(task_id) == fraction


def test_cron_after_is_the_next_minute_strictly_after_the_one_holding_the_time() -> None:
    on_the_minute = datetime(2026, 12, 7, 12, 8, tzinfo=UTC)
    assert cron_after("8 12 * * *", on_the_minute) == datetime(2026, 12, 8, 12, 8, tzinfo=UTC)
    assert cron_after("* * * * *", on_the_minute.replace(second=59, microsecond=900)) == (
        datetime(2026, 12, 7, 12, 9, tzinfo=UTC)
    )
    assert cron_after("61 * * * *", NOW) is None


def test_crons_are_read_in_the_pods_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the CLI reads them: 09:00 in a pod nine hours east of UTC is midnight UTC."""
    monkeypatch.setenv("TZ", "Etc/GMT-9")
    time.tzset()
    assert cron_after("0 9 * * *", NOW) == datetime(2026, 12, 8, 0, 0, tzinfo=UTC)


def test_crons_keep_their_local_hour_across_daylight_saving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """9:00 in New York is 14:00 UTC in winter and 13:00 UTC once clocks go forward (the
    second Sunday of March 2027), as the CLI reads it; not the offset of the day it was
    computed."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    assert cron_after("0 9 * * *", NOW) == datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    assert cron_after("0 9 15 3 *", NOW) == datetime(2027, 3, 15, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["UTC0", "Nowhere/Atlantis", "../../etc/passwd"])
def test_a_tz_that_names_no_zone_reads_crons_at_the_current_offset(
    monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    assert local_zone().utcoffset(NOW) == datetime.now().astimezone().utcoffset()
    assert cron_after("0 9 * * *", NOW) is not None


def test_a_file_read_again_unchanged_is_not_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner reads the file after every turn; its crons are the agent's, up to 1,000."""
    import corral.runner.durable_schedule as schedule

    parsed: list[object] = []
    monkeypatch.setattr(schedule, "parse_task", lambda e: parsed.append(e) or parse_task(e))
    write_schedule(tmp_path, {"tasks": [task("8 12 * * *", id="5e1f0a77")]})
    first = next_fire_time(tmp_path, NOW)
    assert next_fire_time(tmp_path, NOW) == first == datetime(2026, 12, 7, 12, 8, tzinfo=UTC)
    assert len(parsed) == 1
    # Later the same task is past: read from what was computed.
    assert next_fire_time(tmp_path, datetime(2026, 12, 7, 12, 9, tzinfo=UTC)) is None
    write_schedule(tmp_path, {"tasks": [task("9 12 * * *", id="5e1f0a77")]})
    assert next_fire_time(tmp_path, NOW) == datetime(2026, 12, 7, 12, 9, tzinfo=UTC)
    assert len(parsed) == 2
