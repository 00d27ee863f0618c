"""Bounds on what clients and the agent can make the runner hold or wait for (issue 11,
item 9), and the runner's HTTP answers that need no CLI: readiness while busy, interrupt
errors over WebSocket. In-process: the API over agents whose CLI is never started."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from corral.runner import agent as agent_module
from corral.runner import sse
from corral.runner.agent import AgentState, AgentWorker, Turn
from corral.runner.event_buffer import EventBuffer, event_size
from corral.runner.events import synthetic_result
from corral.runner.http_api import TRANSCRIPT_MAX_LIMIT, RunnerApi
from corral.runner.layout import AgentPaths
from corral.runner.metrics import RunnerMetrics
from corral.runner.saved_session import SavedSession
from corral.runner.session import RunnerSession
from corral.runner.transcript import lines_backwards, read_transcript


def _worker(tmp_path: Path, name: str) -> AgentWorker:
    paths = AgentPaths(name, tmp_path / name, tmp_path / "claude" / name, tmp_path / f"{name}.json")

    def no_options(resume: str | None) -> Any:
        raise AssertionError("the CLI is never started here")

    return AgentWorker(
        paths, no_options, RunnerMetrics(), saved=SavedSession(), persist=False, restart=True
    )


async def _client(api: RunnerApi) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(api.app()))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def one_agent(tmp_path: Path) -> AsyncIterator[tuple[AgentWorker, TestClient[Any, Any]]]:
    worker = _worker(tmp_path, "main")
    api = RunnerApi(RunnerSession("LongRunning", [worker], fake_api=True), RunnerMetrics())
    async for client in _client(api):
        yield worker, client


# --- the event buffer of a turn ----------------------------------------------------------


async def test_a_slow_reader_loses_the_oldest_events_is_told_and_always_gets_the_result() -> None:
    turn = Turn("main", "hi", events=EventBuffer(capacity=50))
    for n in range(10_000):  # the agent never waits for the reader
        turn.publish({"type": "text_delta", "text": str(n)})
    turn.finish(synthetic_result("success", "done", None))
    received = [e async for e in sse.turn_events(turn, keepalive=5) if e is not None]
    assert received[0] == {"type": "events_dropped", "count": 10_001 - 50, **_tags(turn)}
    assert len(received) == 51
    assert [e["text"] for e in received[1:-1]] == [str(n) for n in range(10_000 - 49, 10_000)]
    assert received[-1]["type"] == "result" and received[-1]["result"] == "done"
    assert turn.result is not None and turn.result["turn"] == turn.id


async def test_a_result_is_kept_even_when_the_buffer_holds_one_event() -> None:
    turn = Turn("main", "hi", events=EventBuffer(capacity=1))
    turn.publish({"type": "text_delta", "text": "x"})
    turn.finish(synthetic_result("success", "done", None))
    events = [e async for e in sse.turn_events(turn, keepalive=5) if e is not None]
    assert [e["type"] for e in events] == ["events_dropped", "result"]


async def test_a_slow_reader_of_big_events_loses_the_oldest_by_bytes() -> None:
    buffer = EventBuffer(capacity=2000, max_bytes=64 * 1024)
    turn = Turn("main", "hi", events=buffer)
    big = "x" * 10_000  # an `assistant` event with a file the agent writes, say
    for n in range(50):
        turn.publish({"type": "assistant", "content": [{"type": "text", "text": big}], "n": n})
        assert buffer.bytes <= buffer.max_bytes
    held = len(buffer)
    assert 1 < held < 10, held
    huge = synthetic_result("success", "y" * 100_000, None)  # over the bound on its own
    turn.finish(huge)
    assert len(buffer) == 1 and buffer.bytes > buffer.max_bytes  # the result always stays
    received = [e async for e in sse.turn_events(turn, keepalive=5) if e is not None]
    assert received[0]["type"] == "events_dropped" and received[0]["count"] == 50
    assert received[-1]["type"] == "result" and received[-1]["result"] == "y" * 100_000
    assert buffer.bytes == 0


async def test_the_default_buffer_is_bounded() -> None:
    turn = Turn("main", "hi")
    for _ in range(100_000):
        turn.publish({"type": "text_delta", "text": "x"})
    assert len(turn.events) == turn.events.capacity < 100_000


async def test_a_turn_nobody_reads_keeps_no_events(tmp_path: Path) -> None:
    worker = _worker(tmp_path, "main")
    worker.state = AgentState.IDLE
    turn = worker.submit("opening prompt", watched=False)
    for _ in range(1000):
        turn.publish({"type": "text_delta", "text": "x"})
    assert len(turn.events) == 0
    turn.finish(synthetic_result("success", "done", None))
    assert turn.result is not None and turn.result["result"] == "done"


async def test_a_client_that_goes_away_stops_the_buffering() -> None:
    turn = Turn("main", "hi")

    class GoneClient:
        async def write(self, data: bytes) -> None:
            raise ConnectionResetError("client went away")

    turn.publish({"type": "text_delta", "text": "x"})
    with pytest.raises(ConnectionResetError):
        await sse.send_turn(None, GoneClient(), turn)  # type: ignore[arg-type]
    for _ in range(1000):
        turn.publish({"type": "text_delta", "text": "x"})
    assert len(turn.events) == 0


def _tags(turn: Turn) -> dict[str, str]:
    return {"agent": turn.agent, "turn": turn.id}


# --- the transcript ----------------------------------------------------------------------


def _entry(n: int, kind: str = "user", pad: int = 0) -> bytes:
    body = {"type": kind, "uuid": f"u{n}", "message": {"content": f"m{n}" + "p" * pad}}
    return json.dumps(body).encode() + b"\n"


def test_lines_backwards_matches_the_file_whatever_the_block_size(tmp_path: Path) -> None:
    lines = [b"", b"a", b"bb" * 40, b"", b"ccc", b"d" * 200, b"e"]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(lines))
    for block in (1, 2, 3, 7, 64, 4096):
        with path.open("rb") as handle:
            got = list(lines_backwards(handle, max_line=100, block=block))
        expected = [None if len(line) > 100 else line for line in reversed(lines)]
        assert got == expected, block


def test_transcript_reads_the_last_entries_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        b"".join(_entry(n, "user" if n % 3 else "summary") for n in range(100)) + b"{torn"
    )
    page = read_transcript(path, 5)
    assert [e["uuid"] for e in page.entries] == ["u92", "u94", "u95", "u97", "u98"]
    assert not page.truncated
    assert read_transcript(tmp_path / "missing.jsonl", 5).entries == []
    with pytest.raises(ValueError):
        read_transcript(path, 0)


def test_transcript_reads_only_the_tail_of_a_long_session(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with path.open("wb") as handle:
        for n in range(40_000):  # about 20 MB
            handle.write(_entry(n, pad=450))
    tracemalloc.start()
    try:
        page = read_transcript(path, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e["uuid"] for e in page.entries] == ["u39997", "u39998", "u39999"]
    assert peak < 2 * 1024 * 1024, f"held {peak} bytes to answer 3 entries"


def test_transcript_skips_huge_lines_and_stops_at_its_byte_budget(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(_entry(1) + _entry(2, pad=5000) + _entry(3))
    page = read_transcript(path, 10, max_line=1000)
    assert [e["uuid"] for e in page.entries] == ["u1", "u3"] and page.truncated
    page = read_transcript(path, 10, max_bytes=5100)
    assert [e["uuid"] for e in page.entries] == ["u3"] and page.truncated


@pytest.mark.parametrize(
    ("query", "named"),
    [
        *[
            (f"/v1/transcript?limit={limit}", "limit must be an integer")
            for limit in ["-1", "0", str(TRANSCRIPT_MAX_LIMIT + 1), "x", "1e3"]
        ],
        *[
            (f"/readyz?wait={wait}", "wait must be seconds from 0 to 60")
            for wait in ["soon", "-1", "61", "nan"]
        ],
    ],
)
async def test_a_query_parameter_out_of_its_range_is_refused_by_name(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]], query: str, named: str
) -> None:
    _, client = one_agent
    response = await client.get(query)
    assert response.status == 400
    assert named in (await response.json())["error"]


async def test_transcript_accepts_limits_in_range(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]],
) -> None:
    _, client = one_agent
    for limit in ("1", str(TRANSCRIPT_MAX_LIMIT)):
        response = await client.get(f"/v1/transcript?limit={limit}")
        assert response.status == 200
        assert (await response.json())["messages"] == []


# --- request bodies ----------------------------------------------------------------------


async def test_a_body_that_never_arrives_gets_408(tmp_path: Path) -> None:
    worker = _worker(tmp_path, "main")
    api = RunnerApi(
        RunnerSession("LongRunning", [worker], fake_api=True), RunnerMetrics(), body_timeout=0.5
    )
    async for client in _client(api):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"text": '
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 60)
        writer.close()
        assert b" 408 " in status_line, status_line


async def test_conversation_order_is_bounded(tmp_path: Path) -> None:
    workers = [_worker(tmp_path, "alice"), _worker(tmp_path, "bob")]
    api = RunnerApi(RunnerSession("Shared", workers, fake_api=True), RunnerMetrics())
    async for client in _client(api):
        body = {"text": "hi", "order": ["alice", "bob"] * 5000}
        response = await client.post("/v1/conversation", json=body)
        assert response.status == 400
        assert "order" in (await response.json())["error"]
        body = {"text": "hi", "order": ["alice", "b" * 1000]}
        response = await client.post("/v1/conversation", json=body)
        assert response.status == 400


# --- readiness and interrupt -------------------------------------------------------------


async def test_a_busy_runner_is_ready_and_says_busy_in_status(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]],
) -> None:
    worker, client = one_agent
    assert (await client.get("/readyz")).status == 503  # never connected yet
    worker.state = AgentState.IDLE
    worker.submit("work")  # now busy
    response = await client.get("/readyz")
    assert response.status == 200, await response.text()
    status = await (await client.get("/v1/status")).json()
    assert status["state"] == "busy" and status["ready"] is True
    response = await client.post("/v1/messages", json={"text": "second"})
    assert response.status == 409


async def test_readiness_held_while_starting_answers_as_the_agent_comes_up(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]],
) -> None:
    # The kubelet's first readiness probe comes as the container starts: held, it sees
    # the runner ready instead of failing and waiting a period.
    worker, client = one_agent
    probe = asyncio.create_task(client.get("/readyz?wait=30"))
    await asyncio.sleep(0.3)
    assert not probe.done(), "answered before the agent came up"
    worker.state = AgentState.IDLE
    worker.ready.set()
    response = await asyncio.wait_for(probe, 10)
    assert response.status == 200, await response.text()


async def test_readiness_hold_is_bounded_and_only_while_starting(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]],
) -> None:
    worker, client = one_agent
    # Never up within the hold: not ready, with the reason.
    response = await client.get("/readyz?wait=0.2")
    assert response.status == 503
    assert "starting" in (await response.json())["reason"]
    # Started once, then lost its CLI: answered at once (a hold here would only delay
    # the kubelet noticing).
    worker.ready.set()
    worker.state = AgentState.RESTARTING
    response = await asyncio.wait_for(client.get("/readyz?wait=30"), 10)
    assert response.status == 503


async def test_shared_runner_stays_ready_while_one_agent_restarts(tmp_path: Path) -> None:
    alice, bob = _worker(tmp_path, "alice"), _worker(tmp_path, "bob")
    session = RunnerSession("Shared", [alice, bob], fake_api=True)
    alice.state, bob.state = AgentState.BUSY, AgentState.RESTARTING
    assert session.readiness()[0] is True
    alice.state = AgentState.RESTARTING
    assert session.readiness()[0] is False
    session.stopping = True
    alice.state = bob.state = AgentState.IDLE
    assert session.readiness() == (False, "shutting down")


class _DeafClient:
    """A CLI that never acknowledges an interrupt."""

    async def interrupt(self) -> None:
        await asyncio.Event().wait()


async def test_websocket_interrupt_timeout_is_reported_and_keeps_the_socket(
    one_agent: tuple[AgentWorker, TestClient[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, client = one_agent
    monkeypatch.setattr(agent_module, "INTERRUPT_TIMEOUT", 0.2)
    worker.state = AgentState.IDLE
    turn = worker.submit("work")
    # The CLI has begun it (before that the interrupt would wait for it to).
    turn.sending = turn.started_in_cli = True
    worker._client = _DeafClient()  # type: ignore[assignment]
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"type": "interrupt"})
        reply = await ws.receive_json(timeout=30)
        assert reply["type"] == "error" and reply["status"] == 504, reply
        assert "interrupt" in reply["message"]
        await ws.send_str("still there?")
        reply = await ws.receive_json(timeout=30)
        assert reply["type"] == "error" and reply["status"] == 400
    response = await client.post("/v1/interrupt", json={})
    assert response.status == 504


async def test_interrupt_reaches_a_message_held_for_a_cli_restart(tmp_path: Path) -> None:
    worker = _worker(tmp_path, "main")
    worker.state = AgentState.IDLE
    turn = worker.submit("work")
    worker._pending = turn  # taken from the inbox while the CLI restarts with a new spec
    assert await worker.interrupt() is True
    assert turn.done.is_set() and turn.result is not None
    assert turn.result["subtype"] == "error_interrupted" and not worker.busy
    assert worker._pending is None


def test_a_transcript_that_is_not_a_regular_file_is_not_waited_for(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "session.jsonl"
    os.mkfifo(fifo)  # the agent's doing: an open for reading would wait for a writer
    pages: list[Any] = []
    reader = threading.Thread(target=lambda: pages.append(read_transcript(fifo, 5)), daemon=True)
    reader.start()
    reader.join(5)
    assert pages and pages[0].entries == [] and pages[0].truncated


def test_event_sizes_are_about_their_json() -> None:
    delta = {"type": "text_delta", "text": "x" * 1000, "agent": "main", "turn": "0123456789ab"}
    assistant = {"type": "assistant", "content": [{"type": "text", "text": "y" * 1000}]}
    for event in (delta, assistant):
        encoded = len(json.dumps(event))
        assert abs(event_size(event) - encoded) <= 32, event["type"]
