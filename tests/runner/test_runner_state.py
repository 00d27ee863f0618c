"""What the runner reads from files the agent or the kubelet can change, and what it
writes: the saved Hybrid session (untrusted, written off the event loop), the re-read
session spec, and CLI stderr in the logs (the key scrubbed before the line is cut)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import SystemMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from runner_harness import project_file

from corral.api import runtime
from corral.api.v1alpha1 import AgentSessionSpec
from corral.runner import app as app_module
from corral.runner import saved_session
from corral.runner.agent import AgentWorker
from corral.runner.jsonlog import REDACTED, JsonFormatter, scrub_and_cut
from corral.runner.layout import AgentPaths
from corral.runner.metrics import RunnerMetrics
from corral.runner.options import build_options, reload_key
from corral.runner.saved_session import (
    MAX_FILE_BYTES,
    SavedSession,
    load_saved,
    parse_saved,
    save,
)
from corral.runner.session_file import load_session
from corral.runner.spec_source import SpecSource

KEY = "SECRETKEY-0123456789abcdef"

# --- CLI stderr ----------------------------------------------------------------------------


def _captured_line(monkeypatch: pytest.MonkeyPatch, line: str) -> str:
    monkeypatch.setenv(runtime.ENV_API_KEY, KEY)
    records: list[str] = []
    formatter = JsonFormatter("s", "ns")

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(formatter.format(record))

    logger = logging.getLogger("corral.runner")
    handler = Capture()
    logger.addHandler(handler)
    try:
        app_module._stderr_logger("main")(line)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1
    return records[0]


@pytest.mark.parametrize("offset", range(app_module.STDERR_LINE_CHARS - 20, 1001))
def test_a_key_across_the_stderr_cut_leaves_no_prefix(
    monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    logged = _captured_line(monkeypatch, "x" * offset + KEY + " and more")
    assert KEY[:8] not in logged, logged[-60:]
    assert len(json.loads(logged)["line"]) <= app_module.STDERR_LINE_CHARS + len(REDACTED)


def test_scrub_and_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV_API_KEY, KEY)
    assert scrub_and_cut(f"key={KEY}!", 100) == f"key={REDACTED}!"
    # The writer's own cut: a key prefix at the end of the line.
    assert scrub_and_cut(f"key={KEY[:12]}", 100) == f"key={REDACTED}"
    assert scrub_and_cut("key=SECRE", 100) == "key=SECRE"  # too short to tell from words
    assert scrub_and_cut("a" * 50, 10) == "a" * 10
    monkeypatch.setenv(runtime.ENV_API_KEY, "short")
    assert scrub_and_cut("short text", 100) == "short text"


# --- the saved Hybrid session --------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"num_turns": [1]}',
        b'{"num_turns": "lots"}',
        b'{"usage": {"input_tokens": []}}',
        b'{"usage": ["input_tokens"]}',
        b'{"total_cost_usd": {"usd": 1}}',
        b'{"total_cost_usd": Infinity}',
        b'{"total_cost_usd": NaN}',
        b'{"num_turns": 1e400}',
        b'{"num_turns": ' + b"9" * 5000 + b"}",
        b'{"session_id": 12}',
        b'{"session_id": "--dangerously-skip-permissions"}',
        b'{"session_id": "../../etc/passwd"}',
        b'{"messages": -3}',
        b"[" * 100_000,
        b"\xff\xfe",
        b"null",
    ],
)
def test_a_wrong_saved_file_is_ignored_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "main.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "corral.runner.saved_session"):
        assert load_saved(path) == SavedSession()
    assert "ignoring the saved session file" in caplog.text


def test_a_saved_file_that_is_not_a_small_regular_file_is_ignored(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"session_id": "a" * 10, "pad": "x" * MAX_FILE_BYTES}))
    assert load_saved(big) == SavedSession()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert load_saved(fifo) == SavedSession()  # returns instead of waiting for a writer
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    assert load_saved(zero) == SavedSession()
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert load_saved(directory) == SavedSession()


def _within(seconds: float, call: Any) -> None:
    """Run `call` in a thread; fail (rather than hang the suite) if it blocks."""
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{call} blocked"


def test_what_the_agent_leaves_at_the_temporary_name_neither_blocks_nor_redirects_a_save(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runner" / "main.json"
    path.parent.mkdir()
    tmp = path.with_name("main.json.tmp")
    os.mkfifo(tmp)  # an open for writing would wait for a reader for ever
    _within(5, lambda: saved_session.save(path, SavedSession(session_id="a", num_turns=1)))
    assert load_saved(path).session_id == "a"
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("the agent's")
    tmp.symlink_to(elsewhere)
    saved_session.save(path, SavedSession(session_id="b"))
    assert load_saved(path).session_id == "b"
    assert elsewhere.read_text() == "the agent's"


def test_a_file_where_the_runner_keeps_a_directory_is_moved_aside_not_fatal(
    tmp_path: Path,
) -> None:
    from corral.runner.layout import prepare

    state = tmp_path / "state"
    state.mkdir()
    (state / "runner").write_text("the agent's file")
    os.mkfifo(state / "claude")
    paths = AgentPaths("main", tmp_path / "ws", state / "claude", state / "runner" / "main.json")
    moved = prepare(paths)
    assert sorted(blocker.name for blocker, _ in moved) == ["claude", "runner"]
    assert (state / "runner").is_dir() and (state / "claude").is_dir()
    aside = next(aside for blocker, aside in moved if blocker.name == "runner")
    assert aside.read_text() == "the agent's file"  # kept, never deleted


def test_a_saved_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "runner" / "main.json"
    saved = SavedSession(
        session_id="8c1c0a4e-1111-4222-8333-123456789abc",
        num_turns=4,
        messages=2,
        total_cost_usd=0.1,
        cli_cost=0.05,
        usage={
            "input_tokens": 5,
            "output_tokens": 6,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 1,
        },
    )
    save(path, saved)
    assert load_saved(path) == saved
    assert parse_saved(b'{"total_cost_usd": 2}').total_cost_usd == 2.0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["session_id", "num_turns", "messages", "total_cost_usd", "cli_cost", "usage"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSON, max_size=6) | JSON)
def test_any_json_in_the_saved_file_gives_a_valid_state(value: Any) -> None:
    data = json.dumps(value).encode()  # NaN/Infinity come out as JSON5-ish literals too
    try:
        saved = parse_saved(data)
    except ValueError:
        return  # refused: load_saved logs it and starts afresh
    assert saved.session_id is None or saved.session_id[0] != "-"
    for number in (saved.num_turns, saved.messages, *saved.usage.values()):
        assert type(number) is int and 0 <= number <= saved_session.MAX_COUNT
    for cost in (saved.total_cost_usd, saved.cli_cost):
        assert type(cost) is float and 0 <= cost <= saved_session.MAX_COST_USD


async def test_the_saved_state_is_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real_save = saved_session.save

    def recording_save(path: Path, saved: SavedSession) -> None:
        threads.append(threading.get_ident())
        real_save(path, saved)

    monkeypatch.setattr(saved_session, "save", recording_save)
    paths = AgentPaths("main", tmp_path, tmp_path / "claude", tmp_path / "runner" / "main.json")
    worker = AgentWorker(
        paths,
        lambda resume: build_options_for_spec({"pattern": "Hybrid"}, paths),
        RunnerMetrics(),
        saved=SavedSession(),
        persist=True,
        restart=True,
    )
    for n in range(3):
        init = SystemMessage(subtype="init", data={"session_id": f"session-{n}"})
        worker._on_message(init)
    await worker.flush_saves()
    assert threads and threading.get_ident() not in threads
    assert json.loads(paths.saved_file.read_text())["session_id"] == "session-2"


# --- the session spec, re-read between messages --------------------------------------------


def _spec_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "projected" / "session.json"
    project_file(path, json.dumps(spec))  # as the kubelet updates the pod's spec file
    return path


def test_spec_source_sees_a_changed_file_and_keeps_the_last_good_spec(
    tmp_path: Path,
) -> None:
    first = {"pattern": "LongRunning", "model": "claude-one", "systemPrompt": "be one"}
    path = _spec_file(tmp_path, first)
    source = SpecSource(load_session(path).spec, path)
    assert source.refresh() is False  # read once, same spec
    assert source.refresh() is False
    _spec_file(tmp_path, {**first, "model": "claude-two", "permissionMode": "plan"})
    assert source.refresh() is True
    assert source.spec.model == "claude-two" and str(source.spec.permission_mode) == "plan"
    _spec_file(tmp_path, {**first, "maxTurns": "many"})  # invalid: kept the last good one
    assert source.refresh() is False and source.spec.model == "claude-two"
    path.unlink()
    assert source.refresh() is False and source.spec.model == "claude-two"
    assert SpecSource(source.spec, None).refresh() is False


def test_reload_key_covers_what_a_spec_change_may_alter(tmp_path: Path) -> None:
    paths = AgentPaths("main", tmp_path, tmp_path / "claude", tmp_path / "main.json")
    base = {"pattern": "LongRunning"}
    key = reload_key(build_options_for_spec(base, paths))
    for change in (
        {"model": "claude-x"},
        {"systemPrompt": "other"},
        {"maxTurns": 3},
        {"maxBudgetUsd": 1},
        {"permissionMode": "acceptEdits"},
        {"allowedTools": ["Bash"]},
        {"disallowedTools": ["Bash"]},
        {"mcpServers": [{"name": "m", "type": "http", "url": "http://m.example/mcp"}]},
    ):
        assert reload_key(build_options_for_spec({**base, **change}, paths)) != key, change
    assert reload_key(build_options_for_spec({**base, "prompt": "hi"}, paths)) == key


def build_options_for_spec(spec: dict[str, Any], paths: AgentPaths) -> Any:
    return build_options(AgentSessionSpec.model_validate(spec), paths, resume=None, env={})


# --- an interrupt that arrives before the message reached the CLI ----------------------------


class SequencingClient:
    """Only what the worker's ordering needs of a CLI client (the real CLI cannot be made
    to lose this race on purpose): a query is echoed as it begins and runs 0.5 s; an
    interrupt stops a running query and is lost on an idle CLI, as the CLI does."""

    def __init__(self) -> None:
        from claude_agent_sdk import ResultMessage, UserMessage

        self.result = ResultMessage
        self.echo = UserMessage
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.running: asyncio.Task[None] | None = None
        self.seen: list[str] = []

    async def query(self, messages: Any) -> None:
        self.seen.append("query")
        async for message in messages:
            await self.out.put(self.echo(message["message"]["content"], uuid=message["uuid"]))
        self.running = asyncio.create_task(self._work())

    async def _work(self) -> None:
        await asyncio.sleep(0.5)
        self.running = None
        await self.out.put(self.result("success", 1, 1, False, 1, "s1", result="done"))

    async def interrupt(self) -> None:
        self.seen.append("interrupt" if self.running else "interrupt (idle: lost)")
        if self.running is not None:
            self.running.cancel()
            self.running = None
            await self.out.put(self.result("error_during_execution", 1, 1, True, 1, "s1"))

    async def receive_messages(self) -> Any:
        while True:
            yield await self.out.get()

    async def disconnect(self) -> None:
        pass


async def test_an_interrupt_before_the_message_reached_the_cli_is_not_lost(
    tmp_path: Path,
) -> None:
    import asyncio

    client = SequencingClient()

    async def reread_spec() -> None:
        await asyncio.sleep(0.01)  # SpecSource.refresh, in a thread: the window

    paths = AgentPaths("main", tmp_path, tmp_path / "claude", tmp_path / "runner" / "main.json")
    worker = AgentWorker(
        paths,
        lambda resume: build_options_for_spec({"pattern": "LongRunning"}, paths),
        RunnerMetrics(),
        saved=SavedSession(),
        persist=False,
        restart=True,
        refresh=reread_spec,
    )

    async def start(options: Any) -> Any:
        return client

    worker._start_client = start  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    turn = worker.submit("do something long")
    assert await worker.interrupt()
    await asyncio.wait_for(turn.done.wait(), 10)
    assert turn.result is not None and turn.result["subtype"] == "error_interrupted"
    assert "interrupt (idle: lost)" not in client.seen
    await worker.stop(0)
    await asyncio.wait_for(running, 10)
