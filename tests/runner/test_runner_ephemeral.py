"""Ephemeral: one prompt, the outcome in the termination log, the exit code says how it went."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from runner_harness import Runner, start_runner

from corral.api import runtime
from corral.api.v1alpha1 import RunResult
from corral.testing.anthropic_script import ReplyUsage, StreamShape, TextStep, bash, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk


def ephemeral(prompt: str = "do the task", **spec: Any) -> dict[str, Any]:
    return {"pattern": "Ephemeral", "prompt": prompt, "allowedTools": ["Bash"], **spec}


def outcome(runner: Runner) -> RunResult:
    data = runner.termination_log.read_bytes()
    assert len(data) <= runtime.TERMINATION_MESSAGE_MAX_BYTES
    return RunResult.model_validate(json.loads(data))


def test_success_writes_the_outcome_and_exits_0(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.add(bash("echo done > result.txt"), text("task complete"))
    runner = start_runner(ephemeral(), tmp_path, fake.url, wait=False)
    assert runner.wait() == 0, runner.logs_text()
    result = outcome(runner)
    assert result.subtype == "success" and result.text == "task complete"
    assert result.num_turns == 2 and result.total_cost_usd > 0
    assert result.usage.input_tokens > 0 and result.session_id
    assert (runner.workspace / "result.txt").read_text().strip() == "done"


def test_max_turns_ends_the_run_with_its_subtype(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.add(bash("echo one"), bash("echo two"), text("never reached"))
    runner = start_runner(ephemeral(maxTurns=1), tmp_path, fake.url, wait=False)
    assert runner.wait() == 1
    assert outcome(runner).subtype == "error_max_turns"
    assert len(fake.message_bodies()) == 1


def test_budget_ends_the_run_with_its_subtype(fake: FakeAnthropic, tmp_path: Path) -> None:
    # 100k output tokens cost dollars at any Claude price; the budget is five cents.
    costly = ReplyUsage(output_tokens=100_000)
    fake.add(bash("echo spend", usage=costly), bash("echo more", usage=costly), text("done"))
    runner = start_runner(ephemeral(maxBudgetUsd=0.05), tmp_path, fake.url, wait=False)
    assert runner.wait() == 1
    result = outcome(runner)
    assert result.subtype == "error_max_budget_usd" and result.total_cost_usd > 0.05


def test_a_huge_result_is_cut_to_fit_the_termination_log(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.add(text('é"\\' * 20_000))
    runner = start_runner(ephemeral(), tmp_path, fake.url, wait=False)
    assert runner.wait() == 0
    result = outcome(runner)  # parses, and is within the bound
    assert result.subtype == "success" and result.text and result.text.endswith("…")
    assert len(runner.termination_log.read_bytes()) > runtime.TERMINATION_MESSAGE_MAX_BYTES - 16


def test_a_crashed_cli_fails_the_run(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.add(TextStep(text="slow " * 200, stream=StreamShape(event_delay=0.2)))
    runner = start_runner(ephemeral(), tmp_path, fake.url, wait=False)
    runner.wait_ready_or_busy()
    for pid in runner.cli_pids():
        os.kill(pid, signal.SIGKILL)
    assert runner.wait() == 1
    assert outcome(runner).subtype == "error_cli_crashed"


def test_sigterm_mid_run_stops_cleanly_and_reports(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.add(TextStep(text="slow " * 200, stream=StreamShape(event_delay=0.2)))
    runner = start_runner(ephemeral(), tmp_path, fake.url, wait=False)
    runner.wait_ready_or_busy()
    assert runner.terminate(timeout=20) == 1
    assert outcome(runner).subtype != "success"


def test_a_bad_session_file_exits_2(tmp_path: Path) -> None:
    runner = start_runner({"pattern": "Ephemeral"}, tmp_path, None, wait=False)
    assert runner.wait() == 2
    assert "prompt" in runner.logs_text()


def test_fake_anthropic_flag_runs_without_a_key(tmp_path: Path) -> None:
    runner = start_runner(
        ephemeral("echo me"), tmp_path, None, args=["--fake-anthropic"], wait=False
    )
    assert runner.wait() == 0, runner.logs_text()
    assert outcome(runner).text == "fake reply to: echo me"
    assert any("fake Anthropic" in line.get("msg", "") for line in runner.logs())


def test_in_a_pod_a_short_run_ends_only_once_the_startup_probe_saw_it_ready(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    """Else the kubelet execs its startup probe into an exited container and posts a Warning
    for a run that went fine (seen in the main job's e2e test)."""
    fake.add(text("quick"))
    in_a_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "CORRAL_STARTUP_PROBE_WAIT_SECONDS": "60"}
    runner = start_runner(ephemeral(), tmp_path, fake.url, wait=False, env=in_a_pod)
    deadline = time.monotonic() + 120
    while True:  # until the run is done (the server may not be up yet)
        assert runner.proc.poll() is None, runner.logs_text()  # it must not leave unprobed
        assert time.monotonic() < deadline, runner.logs_text()
        with contextlib.suppress(OSError):
            status = runner.status()
            if status["numTurns"] >= 1 and status["state"] == "idle":
                break
        time.sleep(0.1)
    assert runner.proc.poll() is None  # finished, still there: nothing has probed it
    code, body = runner.request("GET", "/readyz")  # as `corral.probe` asks, from inside
    assert code == 200, body
    assert runner.wait(timeout=30) == 0, runner.logs_text()
    assert outcome(runner).text == "quick"
