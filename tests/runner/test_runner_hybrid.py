"""Hybrid: a runner stopped with SIGTERM and started again (a new process, same workspace
and state dir) resumes its SDK session: history, files and totals carry over."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from runner_harness import history_text, result_of, start_runner

from corral.testing.anthropic_script import StreamShape, TextStep, bash, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

HYBRID = {"pattern": "Hybrid", "allowedTools": ["Bash"], "idleTimeout": "15m"}
CYCLES = 5


def test_five_sigterm_and_resume_cycles_lose_nothing(fake: FakeAnthropic, tmp_path: Path) -> None:
    workspace, state = tmp_path / "workspace", tmp_path / "state"
    said: list[str] = []  # every user text so far, in order
    session_ids: set[str] = set()
    messages_before = 0
    costs: list[float] = []  # cost of each cycle's first message (the one after a resume)
    for cycle in range(1, CYCLES + 1):
        runner = start_runner(
            HYBRID, tmp_path, fake.url, workspace=workspace, state_dir=state, name=f"c{cycle}"
        )
        try:
            status = runner.status()
            assert status["messages"] == messages_before, "totals carry over from earlier pods"
            fake.reset()
            first = f"cycle {cycle} first: write file {cycle}"
            fake.add(bash(f"echo content-{cycle} > file-{cycle}.txt"), text(f"wrote {cycle}"))
            opened = result_of(runner.send(first))
            assert opened["subtype"] == "success"
            costs.append(opened["cost_usd"])
            # The first request of this pod carried the whole conversation of earlier pods.
            opening = history_text(fake.message_bodies()[0])
            positions = [opening.find(earlier) for earlier in said]
            assert all(p >= 0 for p in positions), (cycle, said, opening[:3000])
            assert positions == sorted(positions), "history arrives in order"
            for earlier in range(1, cycle):
                # Earlier tool calls and their replies are part of that history too.
                assert f"file-{earlier}.txt" in opening and f"wrote {earlier}" in opening
            said.append(first)
            second = f"cycle {cycle} second message"
            result = result_of(runner.send(second))
            assert result["subtype"] == "success"
            said.append(second)
            status = runner.status()
            session_ids.add(status["sessionId"])
            messages_before = status["messages"]
        finally:
            code = runner.terminate()
        assert code == 0, runner.logs_text()
        for n in range(1, cycle + 1):
            assert (workspace / f"file-{n}.txt").read_text().strip() == f"content-{n}"
    assert messages_before == 2 * CYCLES
    # A resumed CLI reports cost cumulatively from its earlier runs; the runner must not
    # count that again: a message costs about the same in every cycle.
    assert max(costs) < 2 * min(costs), costs
    assert sum(costs) < status["totalCostUsd"] < 3 * sum(costs)
    assert len(session_ids) == 1, f"one SDK session across pods, got {session_ids}"


def test_sigterm_lets_a_running_message_finish(fake: FakeAnthropic, tmp_path: Path) -> None:
    runner = start_runner(HYBRID, tmp_path, fake.url)
    reply = "finished despite the signal " * 3
    fake.add(TextStep(text=reply, stream=StreamShape(event_delay=0.2)))
    events: list[dict[str, Any]] = []
    sender = threading.Thread(target=lambda: events.extend(runner.send("long one")), daemon=True)
    sender.start()
    runner.wait_status(lambda s: s["state"] == "busy")
    time.sleep(0.3)
    assert runner.terminate() == 0, runner.logs_text()
    sender.join(30)
    assert result_of(events)["result"] == reply
    # The transcript on disk has the finished reply: the next pod resumes after it.
    saved = json.loads((tmp_path / "state" / "runner" / "main.json").read_text())
    transcripts = list((tmp_path / "state" / "claude" / "projects").rglob("*.jsonl"))
    assert [t.stem for t in transcripts] == [saved["session_id"]]
    assert reply.strip() in transcripts[0].read_text()


def test_sigterm_interrupts_a_message_that_outlasts_the_drain(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    runner = start_runner(HYBRID, tmp_path, fake.url, args=["--drain-seconds", "1"])
    fake.add(TextStep(text="never ending " * 100, stream=StreamShape(event_delay=0.3)))
    events: list[dict[str, Any]] = []
    sender = threading.Thread(target=lambda: events.extend(runner.send("endless")), daemon=True)
    sender.start()
    runner.wait_status(lambda s: s["state"] == "busy")
    started = time.monotonic()
    assert runner.terminate() == 0, runner.logs_text()
    assert time.monotonic() - started < 15, "stopped within a pod's grace period"
    sender.join(30)
    assert result_of(events)["terminal_reason"] != "completed"


def test_a_lost_transcript_starts_a_new_session_instead_of_wedging(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    saved = tmp_path / "state" / "runner" / "main.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"session_id": "8c1c0a4e-1111-4222-8333-123456789abc"}))
    runner = start_runner(HYBRID, tmp_path, fake.url)
    try:
        status = runner.status()
        assert status["lastError"]["kind"] == "resume_failed"
        result = result_of(runner.send("hello again"))
        assert result["subtype"] == "success"
        assert result["session_id"] != "8c1c0a4e-1111-4222-8333-123456789abc"
        # Saved from a worker thread: poll, the file follows shortly.
        deadline = time.monotonic() + 30
        while json.loads(saved.read_text())["session_id"] != result["session_id"]:
            assert time.monotonic() < deadline, saved.read_text()
            time.sleep(0.1)
    finally:
        assert runner.terminate() == 0
