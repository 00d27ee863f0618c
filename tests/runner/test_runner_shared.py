"""Shared: several SDK clients in one runner, each with its own directories, addressable by
name, and a turn-taking conversation in which they answer one another."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from runner_harness import parse_sse, result_of, start_runner

from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

SHARED = {
    "pattern": "Shared",
    "allowedTools": ["Bash"],
    "agents": [
        {"name": "ann", "systemPrompt": "You are ann."},
        {"name": "bob", "systemPrompt": "You are bob."},
        {"name": "cy", "systemPrompt": "You are cy."},
    ],
}


def converse(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        url + "/v1/conversation", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return list(parse_sse(iter(resp.readline, b"")))


def test_three_agents_converse_for_two_rounds(fake: FakeAnthropic, tmp_path: Path) -> None:
    runner = start_runner(SHARED, tmp_path, fake.url)
    try:
        status = runner.status()
        assert [a["name"] for a in status["agents"]] == ["ann", "bob", "cy"]
        events = converse(runner.url, {"text": "topic: llamas", "rounds": 2, "opener": "bob"})
        end = events[-1]
        assert end["type"] == "conversation_end" and end["reason"] == "completed"
        speakers = [x["agent"] for x in end["exchanges"]]
        assert speakers == ["bob", "ann", "cy", "bob", "ann", "cy"]
        # Each reply answers the previous speaker's: the fake echoes what it was sent.
        previous = "topic: llamas"
        for exchange in end["exchanges"]:
            assert previous in exchange["text"]
            previous = exchange["text"]
        results = [e for e in events if e["type"] == "result"]
        assert [r["agent"] for r in results] == speakers
        assert [r["round"] for r in results] == [1, 1, 1, 2, 2, 2]
        # Each request went out with its own agent's system prompt.
        bodies = fake.message_bodies()
        assert len(bodies) == 6
        for body, speaker in zip(bodies, speakers, strict=True):
            assert f"You are {speaker}." in json.dumps(body["system"])
        status = runner.status()
        assert all(a["messages"] == 2 for a in status["agents"])
        assert len({a["sessionId"] for a in status["agents"]}) == 3
    finally:
        assert runner.terminate() == 0, runner.logs_text()


def test_agents_are_addressed_by_name_and_work_in_their_own_directories(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    runner = start_runner(SHARED, tmp_path, fake.url)
    try:
        fake.add(bash("echo mine > cy.txt"), text("cy wrote"))
        assert result_of(runner.send("write", agent="cy"))["result"] == "cy wrote"
        assert (runner.workspace / "cy" / "cy.txt").exists()
        assert not (runner.workspace / "cy.txt").exists()
        code, body = runner.request("POST", "/v1/messages", {"text": "hi", "agent": "dan"})
        assert code == 404 and "ann, bob, cy" in body["error"]
        code, body = runner.request("POST", "/v1/conversation", {"text": "x", "opener": "dan"})
        assert code == 404
        code, body = runner.request("POST", "/v1/conversation", {"text": "x", "rounds": 0})
        assert code == 400
        config_dirs = {p.name for p in (runner.state_dir / "claude" / "agents").iterdir()}
        assert config_dirs == {"ann", "bob", "cy"}
        assert list((runner.state_dir / "claude" / "agents" / "cy" / "projects").rglob("*.jsonl"))
        assert not list((runner.state_dir / "claude" / "agents" / "ann").rglob("*.jsonl"))
    finally:
        assert runner.terminate() == 0, runner.logs_text()
