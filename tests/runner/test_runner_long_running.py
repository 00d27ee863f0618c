"""A LongRunning runner with the real SDK and CLI against the fake API: turns, tools,
streaming over SSE and WebSocket, model API errors, busy and bad requests, CLI crashes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from runner_harness import Runner, history_text, result_of, send_in_background, start_runner

from corral.testing.anthropic_script import ErrorStep, StreamShape, TextStep, bash, error, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

SLOW = StreamShape(event_delay=0.25)


def slow_reply(words: int = 12) -> TextStep:
    # About `words` deltas at a quarter second each: a turn that is visibly running.
    return TextStep(text="slow " * words * 4, stream=SLOW)


def test_bash_tool_call_writes_a_file_in_the_workspace(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    target = long_running.workspace / "made-by-bash.txt"
    fresh_fake.add(bash(f"echo from-the-agent > {target.name}"), text("file written"))
    events = long_running.send("please write the file")
    result = result_of(events)
    assert result["subtype"] == "success" and result["result"] == "file written"
    assert target.read_text().strip() == "from-the-agent"
    kinds = [e["type"] for e in events]
    assert "tool_result" in kinds and kinds.index("tool_result") < len(kinds) - 1
    tool_use = next(
        block
        for e in events
        if e["type"] == "assistant"
        for block in e["content"]
        if block["type"] == "tool_use"
    )
    assert tool_use["name"] == "Bash"
    # The CLI sent the tool result back to the model in its second request.
    second = fresh_fake.message_bodies()[-1]
    assert '"tool_result"' in history_text(second)


def test_status_counts_turns_cost_and_activity(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    before = long_running.status()
    result = result_of(long_running.send("count me"))
    after = long_running.status()
    assert after["state"] == "idle" and after["ready"] is True
    assert after["messages"] == before["messages"] + 1
    assert after["numTurns"] == before["numTurns"] + result["num_turns"]
    assert after["totalCostUsd"] > before["totalCostUsd"]
    assert after["usage"]["inputTokens"] > before["usage"]["inputTokens"]
    assert after["sessionId"] == result["session_id"]
    assert after["lastActivityTime"].endswith("Z")
    assert after["runner"]["sdkVersion"] and after["runner"]["cliVersion"]
    assert after["agents"][0]["name"] == "main" and after["agents"][0]["state"] == "idle"


def test_sse_streams_deltas_before_the_result(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(text("a reply long enough to arrive in several pieces"))
    events = long_running.send("stream please")
    deltas = [e["text"] for e in events if e["type"] == "text_delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == "a reply long enough to arrive in several pieces"
    assert events.index(next(e for e in events if e["type"] == "text_delta")) < len(events) - 1
    assert all(e["agent"] == "main" and e["turn"] == events[-1]["turn"] for e in events)


async def test_websocket_streams_events_and_reports_errors(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(text("over the socket, in pieces of text"))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(long_running.url + "/v1/stream") as ws,
    ):
        await ws.send_str("not json")
        assert (await ws.receive_json(timeout=10))["status"] == 400
        await ws.send_json({"type": "message", "text": ""})
        assert (await ws.receive_json(timeout=10))["status"] == 400
        await ws.send_json({"type": "message", "text": "hi", "agent": "nobody"})
        assert (await ws.receive_json(timeout=10))["status"] == 404
        await ws.send_json({"type": "message", "text": "over the socket"})
        received: list[dict[str, Any]] = []
        while not received or received[-1]["type"] != "result":
            received.append(await ws.receive_json(timeout=60))
    assert received[-1]["subtype"] == "success"
    assert "".join(e["text"] for e in received if e["type"] == "text_delta") == (
        "over the socket, in pieces of text"
    )


async def test_websocket_interrupt_stops_a_running_message(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(slow_reply(40))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(long_running.url + "/v1/stream") as ws,
    ):
        await ws.send_json({"type": "message", "text": "take your time"})
        first = await ws.receive_json(timeout=60)
        assert first["type"] in ("system", "text_delta")
        started = time.monotonic()
        await ws.send_json({"type": "interrupt"})
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "result":
            events.append(await ws.receive_json(timeout=30))
    assert {"type": "interrupted", "agent": "main", "interrupted": True} in events
    # 40*4 deltas at 0.25 s would take 40 s; an interrupt ends it at once.
    assert time.monotonic() - started < 10
    assert events[-1]["terminal_reason"] != "completed"
    long_running.wait_status(lambda s: s["state"] == "idle")


def test_a_busy_runner_stays_ready_and_can_be_interrupted(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    """Readiness means "serves requests": a busy runner that dropped out of its Service
    could not be interrupted (issue 17)."""
    fresh_fake.add(slow_reply(40))
    thread, out = send_in_background(long_running, "keep busy")
    long_running.wait_status(lambda s: s["state"] == "busy")
    # Longer than the pod's readiness period (5 s x 2 failures) would allow if busy
    # made the runner unready; polled, not timed: every answer while busy must be 200.
    deadline = time.monotonic() + 12
    seen = 0
    while time.monotonic() < deadline and long_running.status()["state"] == "busy":
        code, body = long_running.request("GET", "/readyz")
        assert code == 200, body
        seen += 1
        time.sleep(0.5)
    assert seen >= 2 and long_running.status()["state"] == "busy"
    code, body = long_running.request("POST", "/v1/interrupt", {})
    assert code == 200 and body == {"agent": "main", "interrupted": True}
    thread.join(15)
    assert result_of(out)["terminal_reason"] != "completed"
    assert long_running.request("GET", "/readyz")[0] == 200


def test_http_interrupt_ends_the_running_message(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    assert long_running.request("POST", "/v1/interrupt", {})[1]["interrupted"] is False
    fresh_fake.add(slow_reply(40))
    thread, out = send_in_background(long_running, "go slowly")
    long_running.wait_status(lambda s: s["state"] == "busy")
    time.sleep(0.5)  # let the reply start streaming
    code, body = long_running.request("POST", "/v1/interrupt", {"agent": "main"})
    assert code == 200 and body == {"agent": "main", "interrupted": True}
    thread.join(15)
    assert result_of(out)["terminal_reason"] != "completed"


def test_a_second_message_while_busy_gets_409(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(slow_reply(8))
    thread, out = send_in_background(long_running, "first")
    long_running.wait_status(lambda s: s["state"] == "busy")
    code, body = long_running.request("POST", "/v1/messages", {"text": "second"})
    assert code == 409 and "busy" in body["error"] and body["agent"] == "main"
    thread.join(60)
    assert result_of(out)["subtype"] == "success", out
    assert all("second" not in history_text(b) for b in fresh_fake.message_bodies())
    assert long_running.request("GET", "/readyz")[0] == 200


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "malformed"),
        (b'{"text": ""}', 400, "text"),
        (b'{"text": "x", "colour": "red"}', 400, "colour"),
        (b'{"text": 5}', 400, "text"),
        (b"[]", 400, "malformed"),
        (b'{"text": "x", "agent": "ghost"}', 404, "ghost"),
    ],
)
def test_malformed_messages_get_4xx_with_a_reason(
    long_running: Runner, raw: bytes, status: int, needle: str
) -> None:
    code, body = long_running.request("POST", "/v1/messages", raw=raw)
    assert code == status and needle in body["error"], body


def test_oversized_message_gets_413(long_running: Runner, fresh_fake: FakeAnthropic) -> None:
    big = json.dumps({"text": "x" * (256 * 1024)}).encode()
    code, body = long_running.request("POST", "/v1/messages", raw=big)
    assert code == 413 and "bytes" in body["error"]
    assert fresh_fake.message_bodies() == []
    just_fits = json.dumps({"text": "y" * (200 * 1024)}).encode()
    code, _ = long_running.request("POST", "/v1/messages", raw=just_fits)
    assert code == 200


@pytest.mark.parametrize(
    "fault",
    [
        error(429, retry_after=0),
        error(500),
        error(529),
        TextStep(text="cut off halfway through", stream=StreamShape(drop_after=3)),
    ],
    ids=["429", "500", "529", "dropped-stream"],
)
def test_transient_api_errors_are_retried_and_reported(
    long_running: Runner, fresh_fake: FakeAnthropic, fault: Any
) -> None:
    fresh_fake.add(fault, text("recovered"))
    events = long_running.send("try despite errors")
    result = result_of(events)
    assert result["subtype"] == "success" and result["result"] == "recovered"
    retries = [e for e in events if e["type"] == "api_retry"]
    assert retries, "the retry is reported to the client"
    if isinstance(fault, ErrorStep):
        assert retries[0]["status"] == fault.status
        assert long_running.status()["lastError"]["status"] == fault.status


def test_persistent_overload_is_reported_and_the_runner_stays_up(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(error(529, times=10))
    result = result_of(long_running.send("this will fail"))
    assert result["is_error"] is True and result["api_error_status"] == 529
    status = long_running.status()
    assert status["lastError"]["status"] == 529 and status["state"] == "idle"
    fresh_fake.reset()
    assert result_of(long_running.send("and now?"))["subtype"] == "success"


def test_crashed_cli_is_restarted_and_resumes_the_conversation(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    result_of(long_running.send("remember the word pelican"))
    restarts = long_running.status()["agents"][0]["restarts"]
    (cli,) = long_running.cli_pids()
    os.kill(cli, signal.SIGKILL)
    status = long_running.wait_status(
        lambda s: s["agents"][0]["restarts"] == restarts + 1 and s["ready"], timeout=60
    )
    assert status["lastError"]["kind"] == "cli_crashed"
    assert long_running.cli_pids() != [cli]
    fresh_fake.reset()
    assert result_of(long_running.send("what was the word?"))["subtype"] == "success"
    assert "pelican" in history_text(fresh_fake.message_bodies()[-1])


def test_metrics_count_without_leaking_prompts(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    fresh_fake.add(bash("true"), text("ok"))
    result_of(long_running.send("secret-prompt-words"))
    code, body = long_running.request("GET", "/metrics")
    assert code == 200 and isinstance(body, str)
    assert 'corral_runner_tool_calls_total{agent="main",tool="Bash"}' in body
    assert 'corral_runner_messages_total{agent="main",subtype="success"}' in body
    assert "corral_runner_turn_duration_seconds_bucket" in body
    assert 'corral_runner_tokens_total{agent="main",kind="input"}' in body
    assert "secret-prompt-words" not in body and "sk-ant-test" not in body


def test_model_requests_name_corral_as_the_calling_app(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    assert result_of(long_running.send("who calls?"))["subtype"] == "success"
    messages = [r for r in fresh_fake.requests if r.path == "/v1/messages"]
    assert messages
    for request in messages:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers.get("x-client-app") == "corral/0.1.0", headers


def test_logs_are_json_tagged_with_the_session_and_never_show_the_key(
    long_running: Runner,
) -> None:
    lines = long_running.logs()
    assert lines and all("unparsed" not in line for line in lines), lines[:3]
    assert all(line["session"] == "runner" and line["namespace"] == "tests" for line in lines)
    assert "sk-ant-test" not in long_running.logs_text()


def test_transcript_returns_the_conversation(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    result_of(long_running.send("transcribe this line"))
    code, body = long_running.request("GET", "/v1/transcript?limit=4")
    assert code == 200 and body["session_id"] == long_running.status()["sessionId"]
    assert 1 <= len(body["messages"]) <= 4 and body["truncated"] is False
    assert "transcribe this line" in json.dumps(body["messages"])
    for bad in ("x", "-1", "0", "5001"):
        assert long_running.request("GET", f"/v1/transcript?limit={bad}")[0] == 400


def test_listens_from_its_start_and_holds_the_first_probe_until_ready(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    # As the kubelet does when it first sees the container running: connect at once and
    # ask `/readyz?wait=`. The port accepts before the runner has imported its modules,
    # and the answer waits for the agent: 200, not a refusal or a 503 retried a period later.
    runner = start_runner({"pattern": "LongRunning"}, tmp_path, fake.url, wait=False)
    try:
        port = int(runner.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert runner.proc.poll() is None, runner.logs_text()
                assert time.monotonic() < deadline, "the runner never listened"
                time.sleep(0.005)
        log_at_connect = runner.logs_text()
        with conn:
            conn.settimeout(60)
            conn.sendall(b"GET /readyz?wait=30 HTTP/1.0\r\nHost: x\r\n\r\n")
            status_line = conn.makefile("rb").readline()
        assert b" 200 " in status_line, (status_line, runner.logs_text())
        assert "runner started" not in log_at_connect, "listened only once up"
    finally:
        runner.kill()


def test_on_sigterm_the_runner_flushes_its_log_and_exits_at_once(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    # The runner ends its process right after it closed its port (no Python teardown, in
    # which the kubelet's readiness probes met refused connections): nothing it logged may
    # be lost to that, and its exit code is still the run's.
    runner = start_runner({"pattern": "LongRunning"}, tmp_path, fake.url)
    assert runner.terminate() == 0
    messages = [line.get("msg") for line in runner.logs()]
    assert "stopping" in messages and messages[-1] == "runner stopped", messages[-5:]
