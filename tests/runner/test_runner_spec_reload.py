"""A changed session spec (the kubelet refreshing the projected file) applies at the next
message: the CLI is restarted with the new options and resumes the same conversation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runner_harness import history_text, result_of, start_runner

from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

FIRST = {"pattern": "LongRunning", "model": "claude-first-model", "systemPrompt": "You are FIRST."}


def _request_for(fake: FakeAnthropic, text: str) -> dict[str, Any]:
    bodies = [b for b in fake.message_bodies() if text in history_text(b)]
    assert bodies, f"no model request carried {text!r}"
    return bodies[0]


def test_a_changed_spec_applies_at_the_next_message(fake: FakeAnthropic, tmp_path: Path) -> None:
    runner = start_runner(FIRST, tmp_path, fake.url)
    try:
        result_of(runner.send("remember the word heron"))
        body = _request_for(fake, "remember the word heron")
        assert body["model"] == "claude-first-model"
        assert "You are FIRST." in json.dumps(body["system"])
        session_id = runner.status()["sessionId"]
        (cli,) = runner.cli_pids()

        runner.write_spec({**FIRST, "model": "claude-second-model", "systemPrompt": "You are TWO."})
        second = result_of(runner.send("which word was it?"))
        assert second["subtype"] == "success"
        body = _request_for(fake, "which word was it?")
        assert body["model"] == "claude-second-model"
        system = json.dumps(body["system"])
        assert "You are TWO." in system and "FIRST" not in system
        # Same conversation: the new CLI resumed the session with its history.
        assert "heron" in history_text(body)
        status = runner.status()
        assert status["sessionId"] == session_id and status["agents"][0]["restarts"] == 0
        (second_cli,) = runner.cli_pids()
        assert second_cli != cli

        # An unchanged spec (or one whose change no option depends on) keeps the CLI.
        runner.write_spec(
            {**FIRST, "model": "claude-second-model", "systemPrompt": "You are TWO.", "prompt": "x"}
        )
        third = result_of(runner.send("and again"))
        assert runner.cli_pids() == [second_cli]
        # The restarted CLI's cumulative cost was not counted twice (about equal messages).
        assert second["cost_usd"] < 1.5 * third["cost_usd"], (second, third)

        # A broken file keeps the last good spec and the session working.
        assert runner.spec_file is not None
        runner.spec_file.write_text("{not: [valid")
        result_of(runner.send("still here"))
        assert _request_for(fake, "still here")["model"] == "claude-second-model"
        assert runner.cli_pids() == [second_cli]
        assert any("not valid" in line.get("msg", "") for line in runner.logs())
    finally:
        assert runner.terminate() == 0, runner.logs_text()
