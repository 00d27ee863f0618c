"""How events, transcripts and sessions look in a terminal (rich does the drawing).

Pure functions of their input and a `Console`, so tests render recorded streams into a
string and compare.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.client.errors import GATEWAY_HINTS
from corral.client.events import Event
from corral.client.sessions import TABLE_HEADERS, Session, table_row

SUMMARY_CHARS = 80
PREVIEW_CHARS = 100
# Which input of a well-known tool says what the call does.
TOOL_SUMMARY_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description")


def tool_summary(name: str, tool_input: Any) -> str:
    """`Bash(ls -la)`: the tool and the one input that says what it does, cut short."""
    detail = ""
    if isinstance(tool_input, dict):
        for key in TOOL_SUMMARY_KEYS:
            if isinstance(tool_input.get(key), str):
                detail = tool_input[key]
                break
        else:
            detail = next((v for v in tool_input.values() if isinstance(v, str)), "")
    detail = " ".join(detail.split())
    if len(detail) > SUMMARY_CHARS:
        detail = detail[: SUMMARY_CHARS - 1] + "…"
    return f"{name}({detail})"


def _first_line(text: Any) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    head = lines[0].strip() if lines else "(no output)"
    if len(head) > PREVIEW_CHARS:
        head = head[: PREVIEW_CHARS - 1] + "…"
    more = len(lines) - 1
    return head + (f"  (+{more} lines)" if more > 0 else "")


class EventRenderer:
    """Prints one session's events as they arrive: text as it streams, tool calls as one
    line each, a summary line for the result."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._streamed = False  # text of the current assistant message already printed
        self._mid_line = False
        self._own_turn: object = None  # the turn the agent began itself, last shown

    def _text(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        self._mid_line = not text.endswith("\n")

    def _line(self, text: Text) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False
        self.console.print(text, soft_wrap=True)

    def render(self, event: Event) -> None:
        kind = event.get("type")
        if event.get("ownTurn") and event.get("turn") != self._own_turn:
            self._own_turn = event.get("turn")
            self._line(Text("the agent, on its own (a background task ended, say):", style="dim"))
        if kind == "text_delta":
            self._text(str(event.get("text", "")))
            self._streamed = True
        elif kind == "assistant":
            self._assistant(event.get("content") or [])
        elif kind == "tool_result":
            style = "red" if event.get("is_error") else "dim"
            self._line(Text(f"  ⎿ {_first_line(event.get('content'))}", style=style))
        elif kind == "waking":
            self._line(Text("waking the session (it was asleep)…", style="yellow"))
        elif kind == "api_retry":
            self._line(
                Text(
                    f"model API error {event.get('status') or ''}: retry "
                    f"{event.get('attempt')}/{event.get('max_retries')}",
                    style="yellow",
                )
            )
        elif kind == "events_dropped":
            self._line(Text(f"({event.get('count')} events skipped: fell behind)", style="yellow"))
        elif kind == "interrupted":
            said = "interrupted" if event.get("interrupted") else "nothing to interrupt"
            self._line(Text(f"({said})", style="dim"))
        elif kind == "error":
            self._line(Text(error_line(event), style="bold red"))
        elif kind == "result":
            self._line(result_line(event))
            self._streamed = False

    def _assistant(self, content: list[Any]) -> None:
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and not self._streamed:
                self._text(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                summary = tool_summary(str(block.get("name", "?")), block.get("input"))
                self._line(Text(f"⏺ {summary}", style="cyan"))
        self._streamed = False


def error_line(event: Event) -> str:
    status = event.get("status")
    message = str(event.get("message") or event.get("error") or "error")
    try:  # the gateway forwards the runner's JSON refusal as the message
        parsed = json.loads(message)
        if isinstance(parsed, dict) and parsed.get("error"):
            message = str(parsed["error"])
    except ValueError:
        pass
    hint = GATEWAY_HINTS.get(status, "") if isinstance(status, int) else ""
    head = f"error {status}: " if status else "error: "
    return head + message + (f"; {hint}" if hint and hint not in message else "")


def result_line(event: Event) -> Text:
    subtype = str(event.get("subtype", "?"))
    turns = event.get("num_turns") or 0
    parts = [f"{turns} turn{'' if turns == 1 else 's'}"]
    if isinstance(event.get("cost_usd"), int | float):
        parts.append(f"${event['cost_usd']:.4f}")
    if isinstance(event.get("duration_ms"), int | float):
        parts.append(f"{event['duration_ms'] / 1000:.1f} s")
    if subtype == "success" and not event.get("is_error"):
        return Text("✓ " + " · ".join(parts), style="dim green")
    detail = event.get("result") or "; ".join(str(e) for e in event.get("errors") or [])
    if subtype == "success":  # is_error: the CLI gave up on the model API
        subtype = f"error (API status {event.get('api_error_status') or '?'})"
    text = f"✗ {subtype}" + (f": {str(detail)[:300]}" if detail else "") + " · " + parts[0]
    return Text(text, style="red")


def render_transcript(console: Console, answer: dict[str, Any]) -> None:
    """The runner's transcript answer (`messages`: user/assistant entries, oldest first)."""
    for entry in answer.get("messages") or []:
        message = entry.get("message") if isinstance(entry, dict) else None
        if not isinstance(message, dict):
            continue
        role = "you" if entry.get("type") == "user" else "claude"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and str(block.get("text", "")).strip():
                label = Text(f"{role}: ", style="bold cyan" if role == "you" else "bold")
                console.print(label + Text(str(block["text"]).strip()), soft_wrap=True)
            elif kind == "tool_use":
                summary = tool_summary(str(block.get("name", "?")), block.get("input"))
                console.print(Text(f"⏺ {summary}", style="cyan"), soft_wrap=True)
            elif kind == "tool_result":
                style = "red" if block.get("is_error") else "dim"
                preview = block.get("content")
                if isinstance(preview, list):
                    preview = "\n".join(
                        str(p.get("text", "")) for p in preview if isinstance(p, dict)
                    )
                console.print(Text(f"  ⎿ {_first_line(preview)}", style=style), soft_wrap=True)
    if answer.get("truncated"):
        console.print(Text("(some entries were too large to read and are left out)", "yellow"))


def sessions_table(sessions: list[Session], all_namespaces: bool) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 3, 0, 0))
    headers = (["NAMESPACE"] if all_namespaces else []) + TABLE_HEADERS
    for header in headers:
        table.add_column(header, no_wrap=True, header_style="bold")
    for session in sessions:
        row = table_row(session)
        table.add_row(*(([session.namespace] if all_namespaces else []) + row))
    return table
