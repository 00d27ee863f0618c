"""A new pod's first activity report, refused while its network does not admit it yet.

NetworkPolicy agents that admit pods by their IPs in the API (kube-router on the real node)
refuse a new pod's traffic until the kubelet has published its status. The reporter's real
loop runs here against a stand-in for the POST that refuses the first attempts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from corral.runner import activity
from corral.runner.activity import ActivityReporter, Identity
from corral.runner.agent import AgentSnapshot, AgentState
from corral.runner.session import RunnerSession


class IdleAgent:
    """What the reporter reads of an agent worker."""

    name = "main"
    in_use = False

    def add_listener(self, listener: Callable[[], None]) -> None:
        pass

    def snapshot(self) -> AgentSnapshot:
        return AgentSnapshot(
            name="main",
            state=AgentState.IDLE,
            session_id=None,
            num_turns=0,
            messages=0,
            total_cost_usd=0.0,
            usage={},
            last_activity=None,
            last_error=None,
            restarts=0,
            cli_version=None,
        )


async def reports_until_delivered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refusals: int
) -> list[float]:
    """Run the reporter until it said its report was delivered; the times of each try."""
    loop = asyncio.get_running_loop()
    tries: list[float] = []
    delivered = asyncio.Event()

    def post(*_: Any) -> None:
        tries.append(loop.time())
        if len(tries) <= refusals:
            raise ConnectionRefusedError(111, "Connection refused")
        loop.call_soon_threadsafe(delivered.set)

    monkeypatch.setattr(activity, "post_report", post)
    session = RunnerSession("Hybrid", [IdleAgent()], fake_api=True)  # type: ignore[list-item]
    reporter = ActivityReporter(session, "http://operator:8081", Identity("ns", "s", "pod-1"))
    task = asyncio.create_task(reporter.run())
    try:
        await asyncio.wait_for(delivered.wait(), 30)
        for _ in range(500):  # the reporter logs once the POST's thread has returned
            if any(text.endswith(("delivered", "delivered again")) for _, text in messages(caplog)):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    return tries


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == activity.log.name]


async def test_a_first_report_refused_for_a_moment_is_not_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=activity.log.name):
        tries = await reports_until_delivered(monkeypatch, caplog, refusals=4)
    assert len(tries) == 5
    assert messages(caplog) == [
        (logging.INFO, "first activity report not delivered yet; retrying"),
        (logging.INFO, "first activity report delivered"),
    ]


def waits(failures: int, delivered: bool) -> list[float]:
    """The reporter's waits before each retry of `failures` failed pushes in a row."""
    retry = activity.next_retry(0.0, backoff=False, delivered=delivered)
    found = []
    for _ in range(failures):
        retry = activity.next_retry(retry, backoff=True, delivered=delivered)
        found.append(retry)
    return found


def test_a_first_report_is_retried_sooner_than_a_later_outage() -> None:
    """Four retries of a refused first report wait 1.5 s in all; a later outage's first
    retry alone waits 2 s (nothing is known to be starting then)."""
    assert waits(4, delivered=False) == [0.1, 0.2, 0.4, 0.8]
    assert waits(4, delivered=True) == [2.0, 4.0, 8.0, 16.0]
    assert waits(12, delivered=True)[-1] == activity.RETRY_MAX_SECONDS


async def test_a_pod_still_refused_after_the_quiet_time_is_warned_of_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(activity, "FIRST_REPORT_QUIET_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger=activity.log.name):
        await reports_until_delivered(monkeypatch, caplog, refusals=3)
    assert messages(caplog) == [
        (logging.WARNING, "activity report failed"),
        (logging.INFO, "activity reports delivered again"),
    ]
