"""A runner started again on its state (a Hybrid wake) starts its CLI from the record of
the last start, before its own imports, and takes it only when it is exactly what the spec
asks for now (corral.runner.early_cli)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from runner_harness import TEST_API_KEY, Runner, history_text, result_of, start_runner

from corral.runner.early_cli import RECORD_FILE, bundled_cli
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

HYBRID = {"pattern": "Hybrid", "idleTimeout": "15m"}
ADOPTED = "CLI started early, from the last start's record"
NOT_ADOPTED = "CLI started early was not what the spec asks for now: started anew"


def _lines(runner: Runner, msg: str) -> list[dict[str, Any]]:
    return [line for line in runner.logs() if line.get("msg") == msg]


def _first_pod(fake: FakeAnthropic, tmp_path: Path, spec: dict[str, Any]) -> None:
    """A first start on the state dir, one message (the session id is saved), a SIGTERM."""
    runner = start_runner(spec, tmp_path, fake.url, name="first")
    try:
        fake.add(text("first answer"))
        assert result_of(runner.send("remember the word tangerine"))["subtype"] == "success"
    finally:
        assert runner.terminate() == 0, runner.logs_text()


def test_a_woken_runner_takes_the_cli_started_from_the_record(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    _first_pod(fake, tmp_path, HYBRID)
    record = (tmp_path / "state" / RECORD_FILE).read_text()
    assert TEST_API_KEY not in record, "the record holds no secret"
    argv = json.loads(record)["agents"]["main"]["argv"]
    assert any(arg.startswith("--resume") for arg in argv), "ready for the wake"

    # An agent the spec does not have (the record is on the agent's volume): not started.
    body = json.loads(record)
    body["agents"]["ghost"] = body["agents"]["main"]
    (tmp_path / "state" / RECORD_FILE).write_text(json.dumps(body))
    runner = start_runner(HYBRID, tmp_path, fake.url, name="woken")
    try:
        (started,) = _lines(runner, "CLIs started early, from the last start's record")
        assert started["agents"] == ["main"]
        adopted = _lines(runner, ADOPTED)
        assert len(adopted) == 1 and not _lines(runner, NOT_ADOPTED), runner.logs_text()
        assert runner.cli_pids() == [adopted[0]["early_pid"]], "the early CLI is the agent's"
        fake.reset()
        fake.add(text("second answer"))
        assert result_of(runner.send("which word?"))["subtype"] == "success"
        assert "tangerine" in history_text(fake.message_bodies()[0]), "the session resumed"
    finally:
        assert runner.terminate() == 0, runner.logs_text()


def test_a_record_the_spec_no_longer_matches_is_killed_and_started_anew(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    _first_pod(fake, tmp_path, HYBRID)
    changed = {**HYBRID, "model": "claude-changed-model"}
    runner = start_runner(changed, tmp_path, fake.url, name="changed")
    try:
        refused = _lines(runner, NOT_ADOPTED)
        assert len(refused) == 1 and not _lines(runner, ADOPTED), runner.logs_text()
        early_pid = refused[0]["early_pid"]
        assert early_pid not in runner.cli_pids()
        assert not Path(f"/proc/{early_pid}").exists(), "killed and reaped"
        fake.reset()
        fake.add(text("from the new model"))
        assert result_of(runner.send("hello"))["subtype"] == "success"
        assert fake.message_bodies()[0]["model"] == "claude-changed-model"
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    agents = json.loads((tmp_path / "state" / RECORD_FILE).read_text())["agents"]
    assert "claude-changed-model" in agents["main"]["argv"], "the record follows the spec"


def _write_record(state: Path, launch: dict[str, Any]) -> None:
    path = state / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "agents": {"main": launch}}))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another program", "argv[0] is not the SDK's bundled CLI"),
        ("LD_PRELOAD", "the environment may only set or unset CLAUDE* and PWD"),
        ("a FIFO", "not a regular file"),
    ],
)
def test_a_tampered_record_starts_nothing(
    fake: FakeAnthropic, tmp_path: Path, case: str, reason: str
) -> None:
    """The agent can write the state volume: what it puts there never runs."""
    state, marker = tmp_path / "state", tmp_path / "ran"
    cli = bundled_cli()
    assert cli is not None
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    if case == "another program":
        argv = ["/bin/sh", "-c", f"touch {marker}"]
        _write_record(state, {"argv": argv, "cwd": str(workspace), "set": {}, "unset": []})
    elif case == "LD_PRELOAD":
        env = {"LD_PRELOAD": str(tmp_path / "evil.so")}
        _write_record(state, {"argv": [cli], "cwd": str(workspace), "set": env, "unset": []})
    else:
        (state / RECORD_FILE).parent.mkdir(parents=True)
        os.mkfifo(state / RECORD_FILE)
    runner = start_runner(HYBRID, tmp_path, fake.url, name="tampered")
    try:
        notes = [line for line in runner.logs() if "launch record" in str(line.get("msg"))]
        assert len(notes) == 1 and reason in notes[0]["msg"], runner.logs_text()
        assert not _lines(runner, ADOPTED) and not _lines(runner, NOT_ADOPTED)
        fake.add(text("fine"))
        assert result_of(runner.send("hello"))["subtype"] == "success"
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    assert not marker.exists()
