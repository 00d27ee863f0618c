"""Turns the CLI begins on its own, and ways into a session besides the runner's API.

The real SDK and CLI against the fake API. When a background task the agent started ends,
the CLI begins a turn by itself (a task notification) that no client asked for. A client's
message that comes meanwhile must get its own answer: before the runner matched a message
to the CLI's echo of it (or to output that names it), the first result after sending was
taken as the answer, so such a client got the other turn's reply, and every later message
the reply to the one before it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from runner_harness import Runner, result_of, send_in_background, start_runner

from corral.testing.anthropic_script import StreamShape, TextStep, ToolUseStep, bash, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

# Unix sockets flagged __SO_ACCEPTCON in /proc/net/unix listen for connections.
UNIX_LISTENING = 0x10000


@pytest.fixture(scope="module")
def runner(module_fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Any:
    spec = {"pattern": "LongRunning", "allowedTools": ["Bash"], "maxTurns": 8}
    started = start_runner(spec, tmp_path_factory.mktemp("cli-turns"), module_fake.url)
    yield started
    assert started.terminate() == 0, started.logs_text()


def background(name: str, **kwargs: Any) -> ToolUseStep:
    """A reply asking the CLI to run a one-second background task called `name`."""
    step_input = {"command": "sleep 1", "description": name, "run_in_background": True}
    return ToolUseStep(name="Bash", input=step_input, **kwargs)


def ended(name: str) -> str:
    """What only the CLI's notification that task `name` ended holds, as the request's JSON
    has it (the task's name alone is also in the history, in the call that started it)."""
    return f'{name}\\" completed'


def wait_for_request(fake: FakeAnthropic, marker: str, timeout: float = 30) -> None:
    """Until a Messages request carrying `marker` reached the fake (a turn began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker in json.dumps(body) for body in fake.message_bodies()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no request with {marker!r}")


def answers(runner: Runner, *messages: str) -> list[str]:
    return [str(result_of(runner.send(m, timeout=60))["result"]) for m in messages]


def start_task(
    runner: Runner, fake: FakeAnthropic, name: str, *then: TextStep | ToolUseStep
) -> None:
    """The agent starts background task `name`; the fake answers the requests that follow
    (first, the CLI's own turn when the task ends) with `then`, any other with an echo."""
    fake.set_default(text("echo: {last_user}"))
    start = f"start {name}"
    fake.add(background(name, match=start), text("task started", match=start), *then)
    assert answers(runner, start) == ["task started"]


def test_a_turn_the_cli_begins_itself_never_answers_a_clients_message(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    start_task(
        runner,
        fresh_fake,
        "task-one",
        # The CLI's own turn when the task ends: about two seconds of streaming.
        TextStep(
            text="own turn " * 8, match=ended("task-one"), stream=StreamShape(event_delay=0.2)
        ),
    )
    before = runner.status()
    wait_for_request(fresh_fake, ended("task-one"))
    # Sent while the CLI streams its own turn's reply.
    assert answers(runner, "first", "second") == ["echo: first", "echo: second"]
    after = runner.status()
    # The CLI's own turn counts in the totals (its tokens were spent), not as a message.
    assert after["messages"] == before["messages"] + 2
    assert after["numTurns"] == before["numTurns"] + 3
    assert any(line.get("msg") == "turn of the CLI's own ended" for line in runner.logs())


def test_a_message_taken_into_the_clis_own_running_turn_gets_that_turns_answer(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    start_task(
        runner,
        fresh_fake,
        "task-two",
        # The CLI's own turn runs a tool for five seconds (room for a slow machine); a
        # message that comes meanwhile joins that turn, and the model's next reply is the
        # answer to both.
        bash("sleep 5; echo TOOL-$((40 + 2))", match=ended("task-two")),
        text("answer after the tool", match="TOOL-42"),
    )
    wait_for_request(fresh_fake, ended("task-two"))
    time.sleep(0.5)  # the tool is running
    assert answers(runner, "joining") == ["answer after the tool"]
    last = fresh_fake.message_bodies()[-1]
    assert "joining" in json.dumps(last) and "TOOL-42" in json.dumps(last)
    assert answers(runner, "next") == ["echo: next"]


def test_an_interrupt_waits_for_the_cli_to_begin_the_message(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    """Asked while the CLI still streams a turn of its own, an interrupt stops the client's
    message once the CLI begins it (sent at once, it would stop the other turn and leave
    the message to run)."""
    start_task(
        runner,
        fresh_fake,
        "task-three",
        TextStep(
            text="own turn " * 8, match=ended("task-three"), stream=StreamShape(event_delay=0.2)
        ),
        TextStep(text="slow " * 80, match="to interrupt", stream=StreamShape(event_delay=0.25)),
    )
    wait_for_request(fresh_fake, ended("task-three"))
    thread, out = send_in_background(runner, "to interrupt")
    runner.wait_status(lambda s: s["state"] == "busy")
    code, body = runner.request("POST", "/v1/interrupt", {})
    assert code == 200 and body["interrupted"] is True
    thread.join(30)
    result = result_of(out)
    assert result["terminal_reason"] != "completed" and result["result"] != "own turn " * 8
    # (The fake echoes the request's last user text, which holds the interrupted one too.)
    assert answers(runner, "after the interrupt")[0].endswith("after the interrupt")


def test_an_interrupt_stops_a_turn_the_cli_began_itself(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    start_task(
        runner,
        fresh_fake,
        "task-four",
        # Fifteen seconds of streaming, unless stopped.
        TextStep(text="long " * 60, match=ended("task-four"), stream=StreamShape(event_delay=0.25)),
    )
    wait_for_request(fresh_fake, ended("task-four"))
    time.sleep(0.5)  # the CLI streams its own turn's reply
    asked = time.monotonic()
    code, body = runner.request("POST", "/v1/interrupt", {})
    assert code == 200 and body["interrupted"] is True
    deadline = asked + 10
    while time.monotonic() < deadline and not any(
        line.get("msg") == "turn of the CLI's own ended" and line.get("subtype") != "success"
        for line in runner.logs()
    ):
        time.sleep(0.1)
    assert time.monotonic() < deadline, "the CLI's own turn ran on"
    assert answers(runner, "after")[0].endswith("after")


def test_a_slash_command_keeps_the_output_it_makes_before_its_echo(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    events = runner.send("/cost", timeout=60)
    result = result_of(events)
    assert result["subtype"] == "success" and "cost" in str(result["result"]).lower()
    texts = [
        block.get("text", "")
        for e in events
        if e["type"] == "assistant"
        for block in e["content"]
        if isinstance(block, dict)
    ]
    assert any("cost" in t.lower() for t in texts), events


def test_a_slash_command_the_cli_refuses_is_answered_without_an_echo(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    """The CLI answers `/help` in a pod ("isn't available in this environment") without
    echoing it: its result names the message instead. Waiting for the echo alone left the
    agent busy for good."""
    fresh_fake.set_default(text("echo: {last_user}"))
    result = result_of(runner.send("/help", timeout=30))
    assert "isn't available" in str(result["result"]), result
    # (The CLI hands the refusal to the model with the next message, which the fake echoes.)
    assert answers(runner, "still there?")[0].endswith("still there?")


def listening_unix_sockets(pid: int) -> list[str]:
    """Paths (or "@abstract" names) of the Unix sockets `pid` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue  # closed meanwhile
        if str(target).startswith("socket:["):
            inodes.add(str(target)[len("socket:[") : -1])
    listening = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 7 and fields[6] in inodes and int(fields[3], 16) & UNIX_LISTENING:
            listening.append(fields[7] if len(fields) > 7 else "(unnamed)")
    return listening


def test_the_agents_cli_listens_on_no_socket(runner: Runner) -> None:
    """Every way into a session is the runner's API: the CLI's own cross-session inbox (a
    socket under /tmp taking messages from any process in the pod) stays closed."""
    pids = runner.cli_pids()
    assert pids
    for pid in pids:
        assert listening_unix_sockets(pid) == [], pid
    assert listening_unix_sockets(runner.proc.pid) == []


async def test_a_watching_websocket_client_gets_the_turns_the_cli_begins_itself(
    runner: Runner, fresh_fake: FakeAnthropic
) -> None:
    """`{"type": "watch"}` on the socket: the CLI's own turns (here, a background task's
    notification) reach the client, tagged `ownTurn`; a client that did not ask gets none,
    and a client's own message is not sent to watchers."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(runner.url + "/v1/stream") as watching,
        http.ws_connect(runner.url + "/v1/stream") as other,
    ):
        await watching.send_json({"type": "watch", "agent": ["not", "a", "name"]})
        assert (await watching.receive_json(timeout=10))["status"] == 400
        await watching.send_json({"type": "watch"})
        assert await watching.receive_json(timeout=10) == {"type": "watching", "agents": ["main"]}
        await asyncio.to_thread(
            start_task,
            runner,
            fresh_fake,
            "task-five",
            text("the task is done", match=ended("task-five")),
        )
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "result":
            events.append(await watching.receive_json(timeout=30))
        with pytest.raises(TimeoutError):
            await other.receive_json(timeout=1)
    assert all(e["ownTurn"] is True and e["agent"] == "main" for e in events), events
    assert len({e["turn"] for e in events}) == 1 and events[0]["turn"].startswith("cli-")
    assert "".join(e["text"] for e in events if e["type"] == "text_delta") == "the task is done"
    # Not the client's own turn ("task started"), which went to its own request.
    assert not any("task started" in json.dumps(e) for e in events)


async def test_watchers_are_bounded_and_a_closed_one_frees_its_place(runner: Runner) -> None:
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(runner.url + "/v1/stream") for _ in range(17)]
        try:
            answers = []
            for ws in sockets:
                await ws.send_json({"type": "watch"})
                answers.append(await ws.receive_json(timeout=10))
            assert answers[:16] == [{"type": "watching", "agents": ["main"]}] * 16
            assert answers[16]["status"] == 503 and "16 watchers" in answers[16]["message"], (
                answers[16]
            )
            await sockets[0].close()
            for _ in range(50):  # the runner sees the close
                await sockets[16].send_json({"type": "watch"})
                if (await sockets[16].receive_json(timeout=10))["type"] == "watching":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("a closed watcher's place was never freed")
        finally:
            for ws in sockets:
                await ws.close()
