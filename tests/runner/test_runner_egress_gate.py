"""The runner starts no CLI, and so runs no hook the agent left in its workspace, before its
egress gate opens (corral.runner.egress_gate): the real SDK and CLI, a loopback canary that
answers (no policy in force yet) and then drops every try (the policy is). On a first start,
with nothing left behind, the CLI boots meanwhile and only the agent's messages wait."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_harness import result_of, send_in_background, start_runner

from corral.api import runtime
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.loopback_canary import LoopbackCanary

pytestmark = pytest.mark.sdk

HELD_SECONDS = 2.0


@pytest.fixture
def canary() -> Iterator[LoopbackCanary]:
    served = LoopbackCanary()
    yield served
    served.close()


def test_no_cli_and_no_planted_hook_runs_before_the_gate_opens(
    fake: FakeAnthropic, tmp_path: Path, canary: LoopbackCanary
) -> None:
    # What an agent could leave on a Hybrid session's volume: a hook the CLI runs as it
    # starts. Here it only notes when it ran.
    workspace = tmp_path / "workspace"
    marker = tmp_path / "hook-ran"
    hook = {"type": "command", "command": f"date +%s.%N > {marker}"}
    (workspace / ".claude").mkdir(parents=True)
    (workspace / ".claude" / "settings.json").write_text(
        json.dumps({"hooks": {"SessionStart": [{"hooks": [hook]}]}})
    )
    env = {
        runtime.ENV_EGRESS_CANARY: f"127.0.0.1:{canary.port}",
        runtime.ENV_EGRESS_CANARY_MAX_WAIT: "60",
    }
    runner = start_runner({"pattern": "LongRunning"}, tmp_path, fake.url, env=env, wait=False)
    try:
        time.sleep(HELD_SECONDS)
        assert runner.proc.poll() is None, runner.logs_text()
        assert runner.cli_pids() == [], "a CLI started while the canary still answered"
        assert not marker.exists()
        assert canary.accepted > 10
        dropped_at = time.time()
        canary.drop()
        runner.wait_ready()
        fake.add(text("hello"))
        assert result_of(runner.send("hi"))["subtype"] == "success"
        # The hook did run, once the gate had opened.
        assert float(marker.read_text()) >= dropped_at
        (opened,) = [line for line in runner.logs() if line.get("msg", "").startswith("egress")]
        assert opened["msg"] == "egress filtered by the NetworkPolicy: CLIs may start"
        assert opened["waited_seconds"] >= HELD_SECONDS
        assert opened["answered_tries"] >= canary.accepted - 1
        metrics = runner.request("GET", "/metrics")[1]
        assert "corral_runner_egress_gate_unconfirmed 0.0" in metrics
    finally:
        assert runner.terminate() == 0, runner.logs_text()


def _first_start_env(tmp_path: Path, canary: LoopbackCanary) -> dict[str, str]:
    """A new pod's first start: workspace, state and home hold nothing (all new folders),
    the canary still answering."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        runtime.ENV_EGRESS_CANARY: f"127.0.0.1:{canary.port}",
        runtime.ENV_EGRESS_CANARY_MAX_WAIT: "60",
        "HOME": str(home),
    }


def test_with_nothing_left_behind_the_cli_boots_while_the_gate_holds_the_messages(
    fake: FakeAnthropic, tmp_path: Path, canary: LoopbackCanary
) -> None:
    # A new pod's first start: workspace, state and home hold nothing yet.
    env = _first_start_env(tmp_path, canary)
    runner = start_runner({"pattern": "LongRunning"}, tmp_path, fake.url, env=env, wait=False)
    try:
        runner.wait_ready()  # the CLI booted and did its handshake behind the shut gate
        assert runner.cli_pids(), runner.logs_text()
        fake.add(text("held, then answered"))
        thread, events = send_in_background(runner, "hi")
        time.sleep(HELD_SECONDS)
        assert canary.accepted > 10  # still answering: the gate is shut
        assert fake.requests == [], "the agent reached the model before the gate opened"
        assert thread.is_alive()
        dropped_at = time.time()
        canary.drop()
        thread.join(60)
        assert result_of(events)["subtype"] == "success", events
        assert [r.received_at >= dropped_at for r in fake.requests] == [True]
        messages = [line.get("msg", "") for line in runner.logs()]
        assert any(m.startswith("CLI started before the egress gate opened") for m in messages)
        assert "egress filtered by the NetworkPolicy: CLIs may start" in messages
    finally:
        assert runner.terminate() == 0, runner.logs_text()


def test_a_spec_with_mcp_servers_starts_its_cli_only_after_the_gate(
    fake: FakeAnthropic, tmp_path: Path, canary: LoopbackCanary
) -> None:
    # The CLI connects to a spec's MCP servers as it starts: that waits for the policy.
    env = _first_start_env(tmp_path, canary)
    spec = {"pattern": "LongRunning",
            "mcpServers": [{"name": "tools", "url": "http://127.0.0.1:9/mcp"}]}  # fmt: skip
    runner = start_runner(spec, tmp_path, fake.url, env=env, wait=False)
    try:
        time.sleep(HELD_SECONDS)
        assert runner.proc.poll() is None, runner.logs_text()
        assert runner.cli_pids() == [], "a CLI with MCP servers started behind a shut gate"
        canary.drop()
        runner.wait_ready()
        assert runner.cli_pids()
    finally:
        assert runner.terminate() == 0, runner.logs_text()
