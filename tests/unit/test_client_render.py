"""corral.client on recorded streams: SSE parsing, what chat/send print, transcripts, ls rows.

The recordings in client_recordings/ are what a real runner (with the fake model) sent:
a turn with a Bash tool call and a plain turn; the transcript after both.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from corral.client.errors import CorralError, gateway_error
from corral.client.events import Reply, SseParser, ends_turn, parse_sse
from corral.client.render import EventRenderer, render_transcript, tool_summary
from corral.client.sessions import Session, parse_ref, table_row

RECORDINGS = Path(__file__).parent / "client_recordings"


def _lines(name: str) -> list[str]:
    return (RECORDINGS / name).read_text().splitlines(keepends=True)


def _render(events: list[dict[str, object]]) -> str:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=200, color_system=None))
    for event in events:
        renderer.render(event)
    return out.getvalue()


def test_a_recorded_tool_call_turn_prints_text_once_and_the_call_compactly() -> None:
    events = list(parse_sse(_lines("tool_call.sse")))
    assert [e["type"] for e in events][-1] == "result"
    printed = _render(events)
    assert printed == (
        "Let me look.\n"
        "⏺ Bash(echo hi > f.txt && ls)\n"
        "  ⎿ f.txt\n"
        "I wrote f.txt for you.\n"
        "✓ 2 turns · $0.0173 · 1.8 s\n"
    )


def test_reply_collects_streamed_text_and_the_result() -> None:
    reply = Reply()
    for event in parse_sse(_lines("plain.sse")):
        reply.add(event)
    assert reply.text == "fake reply to: hello there"
    assert reply.ok and reply.subtype == "success"


def test_the_gateway_waking_comment_becomes_a_waking_event_and_keepalives_vanish() -> None:
    lines = [": waking\n", "\n", ": keepalive\n", "\n", ": waking\n", "\n", *_lines("plain.sse")]
    events = list(parse_sse(lines))
    assert [e["type"] for e in events[:3]] == ["waking", "waking", "system"]
    assert "waking the session" in _render(events[:1])


def test_an_sse_event_may_arrive_in_pieces_and_multi_line_data_joins() -> None:
    parser = SseParser()
    assert parser.feed('data: {"type": "text_delta",\n') is None
    assert parser.feed('data:  "text": "hi"}\n') is None
    assert parser.feed("\n") == {"type": "text_delta", "text": "hi"}
    assert parser.feed("\n") is None  # a blank line with nothing pending is not an event


def test_a_refusal_inside_a_held_stream_ends_the_turn_with_a_hint() -> None:
    # What the gateway writes when the runner it woke answers 409 busy.
    busy = json.dumps({"error": "agent 'main' is busy with message abc", "agent": "main"})
    frame = json.dumps({"type": "error", "status": 409, "message": busy})
    events = list(parse_sse([": waking\n", "\n", f"data: {frame}\n", "\n"]))
    assert ends_turn(events[-1])
    printed = _render(events)
    assert "error 409: agent 'main' is busy with message abc; " in printed
    assert "interrupt" in printed  # what to do
    reply = Reply()
    for event in events:
        reply.add(event)
    assert not reply.ok and reply.subtype == "error"


def test_a_failed_result_says_why() -> None:
    printed = _render(
        [{"type": "result", "subtype": "error_max_turns", "is_error": True, "num_turns": 3,
          "result": None, "errors": ["hit max turns"]}]
    )  # fmt: skip
    assert printed == "✗ error_max_turns: hit max turns · 3 turns\n"


def test_a_result_that_is_an_error_despite_its_subtype_says_error() -> None:
    printed = _render(
        [{"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
          "api_error_status": 529, "result": "API Error: 529"}]
    )  # fmt: skip
    assert printed == "✗ error (API status 529): API Error: 529 · 1 turn\n"


def test_non_json_data_is_reported_not_raised() -> None:
    events = list(parse_sse(["data: {oops\n", "\n"]))
    assert events[0]["type"] == "error" and "not JSON" in events[0]["message"]


def test_tool_summaries_pick_the_telling_input_and_stay_short() -> None:
    assert tool_summary("Read", {"file_path": "/w/a.py", "limit": 5}) == "Read(/w/a.py)"
    assert tool_summary("Custom", {"n": 1, "what": "x  y\nz"}) == "Custom(x y z)"
    long = tool_summary("Bash", {"command": "x" * 500})
    assert len(long) == len("Bash()") + 80 and long.endswith("…)")


def test_recorded_transcript_renders_as_a_conversation() -> None:
    answer = json.loads((RECORDINGS / "transcript.json").read_text())
    out = io.StringIO()
    render_transcript(Console(file=out, width=200, color_system=None), answer)
    assert out.getvalue().splitlines() == [
        "you: write a file",
        "claude: Let me look.",
        "⏺ Bash(echo hi > f.txt && ls)",
        "  ⎿ f.txt",
        "claude: I wrote f.txt for you.",
        "you: hello there",
        "claude: fake reply to: hello there",
    ]


def test_ls_row_shows_idle_time_turns_cost_and_age() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    obj = {
        "metadata": {"name": "chat", "namespace": "demo",
                     "creationTimestamp": (now - timedelta(hours=3)).isoformat()},
        "spec": {"pattern": "Hybrid"},
        "status": {"phase": "Idle", "numTurns": 4, "totalCostUsd": 0.0123,
                   "idleSince": (now - timedelta(seconds=300)).isoformat()},
    }  # fmt: skip
    assert table_row(Session.from_object(obj), now) == [
        "chat", "Hybrid", "Idle", "5m", "4", "$0.0123", "3h"
    ]  # fmt: skip
    fresh = Session.from_object({"metadata": {"name": "x"}, "spec": {"pattern": "Ephemeral"}})
    assert table_row(fresh, now)[2:] == ["Pending", "-", "-", "-", "-"]


def test_session_references() -> None:
    assert str(parse_ref("demo/chat", "default")) == "demo/chat"
    assert str(parse_ref("chat", "mine")) == "mine/chat"
    with pytest.raises(CorralError, match="NAMESPACE/NAME"):
        parse_ref("Demo/chat!", "default")


def test_gateway_and_service_proxy_refusals_are_one_line_with_what_to_do() -> None:
    forbidden = gateway_error(
        403, b'{"error": "user \'bob\' may not create agentsessions/connect", "status": 403}',
        "demo/chat",
    )  # fmt: skip
    assert str(forbidden).startswith("demo/chat: user 'bob' may not create")
    assert "corral-session-user" in str(forbidden) and "\n" not in str(forbidden)
    # The API server's own refusal of the service proxy (a Status object).
    status = {"kind": "Status", "message": 'services "corral-gateway:http" is forbidden: ...'}
    proxy = gateway_error(403, json.dumps(status).encode(), "demo/chat")
    assert "services/proxy" in str(proxy) and "CORRAL_GATEWAY_URL" in str(proxy)
    gone = gateway_error(503, json.dumps({"kind": "Status", "message": "no endpoints"}), "d/c")
    assert "gateway Service" in str(gone)


def test_what_the_agent_prints_cannot_drive_the_terminal() -> None:
    """A prompt-injected agent's text must not write the clipboard (OSC 52), retitle the
    terminal or erase lines: its control characters are shown, not obeyed."""
    from corral.client.terminal import console

    out = console()
    out.file = io.StringIO()
    hostile = "ok\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;owned\x07\x1b[2K\x9b31m done\r\n"
    renderer = EventRenderer(out)
    renderer.render({"type": "text_delta", "text": hostile})
    renderer.render({"type": "tool_result", "content": hostile, "is_error": True})
    renderer.render({"type": "result", "subtype": "error_during_execution", "result": hostile})
    written = out.file.getvalue()
    assert "\x1b]" not in written and "\x07" not in written and "\x9b" not in written
    assert "\x1b[2K" not in written
    assert "\u241b]52;c;cm0gLXJmIH4=" in written  # shown for what it is


def test_a_turn_the_agent_began_itself_is_introduced_once() -> None:
    """Watched on a WebSocket (`corral chat`), the turns the agent begins itself come
    tagged `ownTurn`; each is introduced with one line, and a client's own turn is not."""
    own = {"ownTurn": True, "turn": "cli-1", "agent": "main"}
    events: list[dict[str, object]] = [
        {"type": "text_delta", "text": "mine", "turn": "abc"},
        {"type": "result", "subtype": "success", "num_turns": 1, "turn": "abc"},
        {"type": "text_delta", "text": "Build ", **own},
        {"type": "text_delta", "text": "done.", **own},
        {"type": "result", "subtype": "success", "num_turns": 1, **own},
    ]
    printed = _render(events)
    assert printed.count("the agent, on its own") == 1
    assert printed.index("mine") < printed.index("the agent, on its own") < printed.index("Build")
    assert "Build done." in printed


async def test_chat_shows_a_turn_the_agent_began_itself_without_ending_its_own() -> None:
    """A turn the agent began itself that ends while chat waits for its message's reply is
    shown, and chat keeps waiting for the reply (its result is not the message's)."""
    from collections.abc import AsyncIterator
    from typing import Any

    from corral.client.chat import Chat

    own = {"ownTurn": True, "turn": "cli-2", "agent": "main"}
    arriving: list[dict[str, Any]] = [
        {"type": "text_delta", "text": "tests passed", **own},
        {"type": "result", "subtype": "success", "num_turns": 1, **own},
        {"type": "text_delta", "text": "hello back", "turn": "t1"},
        {"type": "result", "subtype": "success", "num_turns": 1, "turn": "t1"},
    ]

    sent: list[str] = []

    class Socket:
        ref = "team-a/demo"

        async def send(self, text: str, agent: str | None = None) -> None:
            sent.append(text)

        async def interrupt(self, agent: str | None = None) -> None:
            raise AssertionError("nothing to interrupt")

        async def events(self) -> AsyncIterator[dict[str, Any]]:
            for event in arriving:
                yield event

    out = io.StringIO()
    chat = Chat(Socket(), None, Console(file=out, width=200, color_system=None))  # type: ignore[arg-type]
    assert await chat.turn("hello") is True
    await chat.reader
    assert sent == ["hello"]
    printed = out.getvalue()
    assert printed.index("tests passed") < printed.index("hello back")
    assert printed.count("✓") == 2 and chat.events.qsize() == 1  # only the closing marker
