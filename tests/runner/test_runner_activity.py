"""Activity reports: the runner pushes `ActivityReport`s to the operator's endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from runner_harness import result_of, start_runner

from corral.api.activity import ACTIVITY_PATH, ActivityReport
from corral.runner.activity import report_url
from corral.testing.anthropic_script import StreamShape, TextStep, ToolUseStep, text
from corral.testing.durable_tasks import minute_run_on_time
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk


class Collector(ThreadingHTTPServer):
    reports: list[tuple[str, dict[str, Any]]]
    authorizations: list[str | None]


class Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.reports.append((self.path, json.loads(body)))
        self.server.authorizations.append(self.headers.get("Authorization"))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def operator_endpoint() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), Handler)
    server.reports = []
    server.authorizations = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_report_url_accepts_a_base_or_a_full_url() -> None:
    assert report_url("http://op:8081") == "http://op:8081" + ACTIVITY_PATH
    assert report_url("http://op:8081/") == "http://op:8081" + ACTIVITY_PATH
    assert report_url("http://op:8081/custom") == "http://op:8081/custom"


def test_runner_reports_start_busy_and_idle(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    host, port = operator_endpoint.server_address[:2]
    runner = start_runner(
        {"pattern": "Hybrid"},
        tmp_path,
        fake.url,
        env={
            "CORRAL_ACTIVITY_URL": f"http://{host!s}:{port}",
            "CORRAL_POD_NAME": "pod-7",
            "CORRAL_ACTIVITY_TOKEN": "token-of-pod-7",
        },
    )
    try:
        # Reports begin once the agent is up (a message sent before the first one is seen
        # in it as busy, or in its totals; the operator takes any report as activity).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not operator_endpoint.reports:
            time.sleep(0.05)
        result_of(runner.send("report me"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(operator_endpoint.reports) < 3:
            time.sleep(0.05)
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    paths = {path for path, _ in operator_endpoint.reports}
    assert paths == {ACTIVITY_PATH}
    reports = [ActivityReport.model_validate(body) for _, body in operator_endpoint.reports]
    assert all((r.namespace, r.name, r.pod_name) == ("tests", "runner", "pod-7") for r in reports)
    busy = [r.busy for r in reports]
    assert busy[0] is False and True in busy, busy
    after = reports[busy.index(True) + 1]
    assert after.busy is False and (after.num_turns or 0) >= 1 and after.session_id
    assert reports[-1].busy is False  # the last word on the way out
    assert after.agents[0].name == "main" and after.sdk_version and after.cli_version
    # Every report proves which pod sent it, and none claims a time (the operator's clock).
    assert set(operator_endpoint.authorizations) == {"Bearer token-of-pod-7"}
    assert all("lastActivityTime" not in body for _, body in operator_endpoint.reports)


def busy_flags(endpoint: Collector) -> list[bool]:
    return [bool(body["busy"]) for _, body in endpoint.reports]


def wait_for_reports(endpoint: Collector, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(endpoint.reports) < count:
        time.sleep(0.05)


def reporting_runner(
    spec: dict[str, Any], tmp_path: Path, fake: FakeAnthropic, endpoint: Collector, pod: str
) -> Any:
    host, port = endpoint.server_address[:2]
    env = {"CORRAL_ACTIVITY_URL": f"http://{host!s}:{port}", "CORRAL_POD_NAME": pod}
    return start_runner(spec, tmp_path, fake.url, env=env)


def test_a_connected_websocket_client_keeps_the_session_in_use(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """Someone connected (through the gateway) but between messages: still activity, so
    the operator does not scale the session down under them."""
    import asyncio

    import aiohttp

    runner = reporting_runner({"pattern": "Hybrid"}, tmp_path, fake, operator_endpoint, "pod-8")

    async def connect_and_hold() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(runner.url + "/v1/stream"):
            seen = len(operator_endpoint.reports)
            await asyncio.to_thread(wait_for_reports, operator_endpoint, seen + 1)

    try:
        wait_for_reports(operator_endpoint, 1)
        assert busy_flags(operator_endpoint) == [False]  # up, nobody connected
        asyncio.run(connect_and_hold())
        wait_for_reports(operator_endpoint, 3)
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    flags = busy_flags(operator_endpoint)
    # connected (in use, no agent working), then left (not in use)
    assert flags[1] is True and flags[2] is False, flags


def test_a_silent_client_stops_counting_after_the_client_idle_timeout(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """spec.clientIdleTimeout: a client that has said nothing for that long no longer keeps
    the session in use, though it stays connected."""
    import asyncio

    import aiohttp

    spec = {"pattern": "Hybrid", "clientIdleTimeout": "1s"}
    runner = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-9")

    async def reports(count: int) -> None:
        await asyncio.to_thread(wait_for_reports, operator_endpoint, count)

    async def hold_silently() -> list[bool]:
        async with aiohttp.ClientSession() as http, http.ws_connect(runner.url + "/v1/stream"):
            await reports(2)  # connected: in use
            code, metrics = await asyncio.to_thread(runner.request, "GET", "/metrics")
            assert code == 200 and "corral_runner_clients 1.0" in metrics
            await asyncio.sleep(1.5)  # silent for longer than clientIdleTimeout
            # A second client comes and goes: each is a report, with the first still there.
            async with http.ws_connect(runner.url + "/v1/stream"):
                await reports(3)
            await reports(4)
            return busy_flags(operator_endpoint)

    try:
        wait_for_reports(operator_endpoint, 1)
        flags = asyncio.run(hold_silently())
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    # up; first client (in use); second client (in use); second gone, the first silent
    # for longer than 1s: not in use, though connected.
    assert flags[:4] == [False, True, True, False], flags


def test_a_turn_the_cli_begins_itself_keeps_the_session_in_use(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """When a background task ends the CLI begins a turn of its own: the agent works though
    no message is running, and a Hybrid session must not be put to sleep under it."""
    host, port = operator_endpoint.server_address[:2]
    task = {"command": "sleep 1", "description": "nightly-job", "run_in_background": True}
    fake.add(
        ToolUseStep(name="Bash", input=task, match="start the job"),
        text("job started", match="start the job"),
        # The CLI's own turn when the task ends (matched by its notification, whose JSON
        # holds the task's name and "completed"): about three seconds of streaming.
        TextStep(
            text="noted " * 12,
            match='nightly-job\\" completed',
            stream=StreamShape(event_delay=0.2),
        ),
    )
    runner = start_runner(
        {"pattern": "Hybrid", "allowedTools": ["Bash"]},
        tmp_path,
        fake.url,
        env={"CORRAL_ACTIVITY_URL": f"http://{host!s}:{port}", "CORRAL_POD_NAME": "pod-9"},
    )
    try:
        assert result_of(runner.send("start the job"))["result"] == "job started"
        seen = len(operator_endpoint.reports)
        # Until the CLI's own turn has ended: a report after the client's turn ended.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            line.get("msg") == "turn of the CLI's own ended" for line in runner.logs()
        ):
            time.sleep(0.1)
        time.sleep(0.5)  # its report
        assert runner.status()["state"] == "idle"
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    after = [bool(body["busy"]) for _, body in operator_endpoint.reports[seen:]]
    # busy while the CLI's own turn ran, idle once it ended
    assert True in after and after[after.index(True) + 1] is False, after


def test_reports_begin_once_the_agents_are_up(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """The reporter (its HTTP client, its models) starts after the CLI's boot, not during
    it, where it would take CPU from the CLI: the first report already sees the agent up."""
    host, port = operator_endpoint.server_address[:2]
    runner = start_runner(
        {"pattern": "LongRunning"},
        tmp_path,
        fake.url,
        env={"CORRAL_ACTIVITY_URL": f"http://{host!s}:{port}", "CORRAL_POD_NAME": "pod-9"},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not operator_endpoint.reports:
            time.sleep(0.05)
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    first = ActivityReport.model_validate(operator_endpoint.reports[0][1])
    assert [a.state for a in first.agents] == ["idle"], first.agents


def test_a_running_background_task_is_counted_and_reported(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """A task the agent left running in the background: the agent is idle (it takes
    messages) while status, metrics and the reports count the task, until it ends; the
    operator keeps a Hybrid session awake longer for it (corral.controller.lifecycle)."""
    host, port = operator_endpoint.server_address[:2]
    task = {"command": "sleep 3", "description": "slow-build", "run_in_background": True}
    fake.set_default(text("echo: {last_user}"))
    fake.add(
        ToolUseStep(name="Bash", input=task, match="start the build"),
        text("build started", match="start the build"),
    )
    runner = start_runner(
        {"pattern": "Hybrid", "allowedTools": ["Bash"]},
        tmp_path,
        fake.url,
        env={"CORRAL_ACTIVITY_URL": f"http://{host!s}:{port}", "CORRAL_POD_NAME": "pod-7"},
    )
    try:
        assert result_of(runner.send("start the build"))["result"] == "build started"
        status = runner.wait_status(lambda s: s["backgroundTasks"] == 1)
        assert status["state"] == "idle"
        assert [a["backgroundTasks"] for a in status["agents"]] == [1]
        code, metrics = runner.request("GET", "/metrics")
        assert code == 200 and 'corral_runner_background_tasks{agent="main"} 1.0' in metrics
        # Still idle: a message goes through while the task runs.
        assert result_of(runner.send("meanwhile"))["result"] == "echo: meanwhile"
        runner.wait_status(lambda s: s["backgroundTasks"] == 0, timeout=30)
        time.sleep(0.5)  # its report
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    counts = [body.get("backgroundTasks") for _, body in operator_endpoint.reports]
    # Reported as the task started (idle, after the turn) and again when it ended.
    assert 1 in counts and 0 in counts[counts.index(1) :], counts
    # The turn that started it ended, and the task still ran: idle, with a task.
    assert any(
        not body["busy"] and body.get("backgroundTasks") == 1
        for _, body in operator_endpoint.reports
    )
    changes = [
        line["running"] for line in runner.logs() if line.get("msg") == "background tasks changed"
    ]
    assert changes[:2] == [1, 0], changes


def test_a_scheduled_wakeup_is_counted_and_reported(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """A wakeup the agent scheduled (ScheduleWakeup, an hour away): its CLI's Stop hook
    lists it when the turn ends, and status, metrics and the reports count it, as the
    operator must keep the session's pod (and the CLI that holds it) up for it."""
    wakeup = {"delaySeconds": 3600, "reason": "check the deploy", "prompt": "check again"}
    fake.add(
        ToolUseStep(name="ScheduleWakeup", input=wakeup, match="check back later"),
        text("see you in an hour", match="check back later"),
    )
    spec = {"pattern": "Hybrid", "allowedTools": ["ScheduleWakeup"]}
    runner = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-10")
    try:
        assert result_of(runner.send("check back later"))["result"] == "see you in an hour"
        status = runner.wait_status(lambda s: s["scheduledWakeups"] == 1)
        assert status["state"] == "idle" and status["agents"][0]["scheduledWakeups"] == 1
        code, metrics = runner.request("GET", "/metrics")
        assert code == 200 and 'corral_runner_scheduled_wakeups{agent="main"} 1.0' in metrics
        wait_for_reports(operator_endpoint, 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            body.get("scheduledWakeups") == 1 for _, body in operator_endpoint.reports
        ):
            time.sleep(0.05)
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    assert any(
        not body["busy"] and body.get("scheduledWakeups") == 1
        for _, body in operator_endpoint.reports
    ), operator_endpoint.reports
    stopping = [line for line in runner.logs() if "wakeups scheduled" in str(line.get("msg"))]
    # Said on the way out: they are lost with the CLI.
    assert stopping and (stopping[0]["scheduled"], stopping[0]["running"]) == (1, 0)


def test_a_durable_task_is_reported_and_read_again_by_the_next_runner(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """A durable task (CronCreate, durable: true) lives in the workspace's
    .claude/scheduled_tasks.json, which outlives the CLI; only a CLI running at its minute
    runs it. The runner reports when it is due (the operator wakes a sleeping session ahead
    of it), and the runner of the next pod finds it at its start."""
    # At 9:07: a one-shot task due on :00 or :30 runs early by a fraction of its id.
    task = {"cron": "7 9 1 1 *", "prompt": "new year", "recurring": False, "durable": True}
    fake.add(
        ToolUseStep(name="CronCreate", input=task, match="every new year"),
        text("noted", match="every new year"),
    )
    now = datetime.now().astimezone()
    due = now.replace(month=1, day=1, hour=9, minute=7, second=0, microsecond=0)
    due = due if due > now else due.replace(year=now.year + 1)
    expected = due.astimezone(UTC).isoformat().replace("+00:00", "Z")
    spec = {"pattern": "Hybrid", "allowedTools": ["CronCreate", "ToolSearch"]}
    first = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-11")
    try:
        assert result_of(first.send("every new year"))["result"] == "noted"
        status = first.wait_status(lambda s: s["nextDurableWakeup"] is not None)
        assert _utc(status["nextDurableWakeup"]) == expected
        assert _utc(status["agents"][0]["nextDurableWakeup"]) == expected
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            body.get("nextDurableWakeup") for _, body in operator_endpoint.reports
        ):
            time.sleep(0.05)
    finally:
        assert first.terminate() == 0, first.logs_text()
    reported = [body["nextDurableWakeup"] for _, body in operator_endpoint.reports]
    assert _utc(next(r for r in reported if r)) == expected, reported
    assert status["scheduledWakeups"] == 0  # not a session cron: it does not die with the CLI
    second = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-12")
    try:
        assert _utc(second.status()["nextDurableWakeup"]) == expected  # before any message
    finally:
        assert second.terminate() == 0, second.logs_text()


# How long before a durable task's minute the test's first runner starts, at least.
LEAD_SECONDS = 45


def test_a_durable_task_runs_in_a_cli_started_before_its_minute(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """What a wake ahead of a durable task relies on: the CLI of the next pod, started
    before the task's minute, runs it then (a CLI started after it would not, runner.md),
    and the runner, reading the file again after that turn, reports no task left."""
    now = datetime.now().astimezone()
    # 45 s ahead at least: the first runner's turn and the second's start come before it on
    # a loaded machine too (given as little as 21 s, a cold run once found no task left).
    ahead = now + timedelta(seconds=LEAD_SECONDS + 60)
    minute = minute_run_on_time(ahead.replace(second=0, microsecond=0))
    task = {
        "cron": f"{minute.minute} {minute.hour} * * *",
        "prompt": "the durable task's prompt",
        "recurring": False,
        "durable": True,
    }
    fake.add(
        ToolUseStep(name="CronCreate", input=task, match="at the next minute"),
        text("noted", match="at the next minute"),
        text("ran it", match="the durable task's prompt"),
    )
    spec = {"pattern": "Hybrid", "allowedTools": ["CronCreate", "ToolSearch"]}
    first = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-13")
    try:
        assert result_of(first.send("at the next minute"))["result"] == "noted"
        # The task is on file (the runner read it) before this pod goes.
        first.wait_status(lambda s: s["nextDurableWakeup"] is not None)
    finally:
        assert first.terminate() == 0, first.logs_text()
    second = reporting_runner(spec, tmp_path, fake, operator_endpoint, "pod-14")
    try:
        left = (minute - datetime.now().astimezone()).total_seconds()
        assert left > 0, f"the second runner started {-left:.1f} s after the task's minute"
        assert second.status()["nextDurableWakeup"] is not None, second.logs_text()
        status = second.wait_status(lambda s: s["nextDurableWakeup"] is None, timeout=left + 60)
        assert datetime.now().astimezone() >= minute
    finally:
        assert second.terminate() == 0, second.logs_text()
    prompts = [json.dumps(body["messages"][-1]) for body in fake.message_bodies()]
    assert any("the durable task's prompt" in p for p in prompts), prompts
    assert not any("was missed" in p for p in prompts), prompts
    assert status["agents"][0]["nextDurableWakeup"] is None


def test_the_cli_fires_a_recurring_durable_task_when_the_runner_says(
    fake: FakeAnthropic, tmp_path: Path, operator_endpoint: Collector
) -> None:
    """The runner reports when the CLI fires a task, not the task's cron minute: a
    recurring task runs late by a fraction of its period read from its id (two thirds of
    half a minute here), counted from its last run, which the CLI then writes."""
    now = time.time()
    task = {
        "id": "aaaaaaaa",  # reads as 2/3: 20 s late each minute
        "cron": "* * * * *",
        "prompt": "the recurring task's prompt",
        "createdAt": int((now - 600) * 1000),
        "lastFiredAt": int((now - 1) * 1000),
        "recurring": True,
    }
    schedule = tmp_path / "workspace" / ".claude" / "scheduled_tasks.json"
    schedule.parent.mkdir(parents=True)
    schedule.write_text(json.dumps({"tasks": [task]}))
    minute = datetime.fromtimestamp(now - 1, UTC).replace(second=0, microsecond=0)
    fake.add(text("ran it", match="the recurring task's prompt"))
    runner = reporting_runner({"pattern": "Hybrid"}, tmp_path, fake, operator_endpoint, "pod-15")
    try:
        reported = datetime.fromisoformat(runner.status()["nextDurableWakeup"])
        assert reported == minute + timedelta(minutes=1, seconds=20)
        status = runner.wait_status(
            lambda s: _utc(s["nextDurableWakeup"] or "2000-01-01Z") > _utc(reported.isoformat()),
            timeout=90,
        )
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    fired = [
        request.received_at
        for request in fake.requests
        if "the recurring task's prompt" in json.dumps(request.body)
    ]
    # Fired when reported (the CLI checks once a second; a loaded machine delays its turn's
    # request), not at its minute, 20 s before.
    assert fired and -1.5 <= fired[0] - reported.timestamp() <= 12, (fired, reported)
    following = datetime.fromisoformat(status["nextDurableWakeup"])
    assert following == reported + timedelta(minutes=1)


def _utc(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_a_runner_stopped_with_a_background_task_running_says_so(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    task = {"command": "sleep 20", "description": "long-job", "run_in_background": True}
    fake.add(
        ToolUseStep(name="Bash", input=task, match="start the job"),
        text("job started", match="start the job"),
    )
    runner = start_runner({"pattern": "Hybrid", "allowedTools": ["Bash"]}, tmp_path, fake.url)
    try:
        assert result_of(runner.send("start the job"))["result"] == "job started"
        runner.wait_status(lambda s: s["backgroundTasks"] == 1)
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    (line,) = [
        line
        for line in runner.logs()
        if line.get("msg")
        == "stopping with background tasks running or wakeups scheduled; they end with the CLI"
    ]
    assert line["running"] == 1 and line["scheduled"] == 0 and line["level"] == "warning"
