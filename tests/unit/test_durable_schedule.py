"""The agent's durable schedule, read from the file its CLI keeps (runner/durable_schedule)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.runner.durable_schedule import (
    MAX_SCHEDULE_BYTES,
    SCHEDULE_FILE,
    earliest,
    next_fire_time,
)

NOW = datetime(2026, 12, 7, 12, 6, 7, tzinfo=UTC)


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


def test_the_earliest_task_of_the_file_the_cli_writes(tmp_path: Path) -> None:
    # As CLI 2.1.327 writes it for CronCreate with durable: true.
    write_schedule(
        tmp_path,
        {
            "tasks": [
                {"id": "a", "cron": "0 9 * * *", "prompt": "morning"},
                {"id": "b", "cron": "8 12 * * *", "prompt": "soon", "createdAt": 1},
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


def test_tasks_that_do_not_parse_are_left_out(tmp_path: Path) -> None:
    tasks: list[object] = [
        "0 9 * * *",
        {"cron": 5},
        {"cron": "every day"},
        {"cron": "0 0 30 2 *"},  # never
        {"cron": "0 " * 200 + "*"},  # too long
        {"cron": "30 13 * * *"},
    ]
    write_schedule(tmp_path, {"tasks": tasks})
    assert next_fire_time(tmp_path, NOW) == datetime(2026, 12, 7, 13, 30, tzinfo=UTC)


def test_a_fifo_in_its_place_is_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / SCHEDULE_FILE
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    assert next_fire_time(tmp_path, NOW) is None


def test_earliest_is_the_next_minute_strictly_after_now() -> None:
    on_the_minute = datetime(2026, 12, 7, 12, 8, tzinfo=UTC)
    assert earliest(["8 12 * * *"], on_the_minute) == datetime(2026, 12, 8, 12, 8, tzinfo=UTC)
    assert earliest([], NOW) is None


def test_crons_are_read_in_the_pods_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the CLI reads them: 09:00 in a pod nine hours east of UTC is midnight UTC."""
    monkeypatch.setenv("TZ", "Etc/GMT-9")
    time.tzset()
    assert earliest(["0 9 * * *"], NOW) == datetime(2026, 12, 8, 0, 0, tzinfo=UTC)
