"""`corral chat`: a prompt with history (prompt_toolkit), replies streamed as they arrive
(rich), one WebSocket for messages and interrupts.

Ctrl-C during a reply interrupts it; a second Ctrl-C leaves (exit 130), also when the
reply has ended by then. At the prompt, Ctrl-D leaves (exit 0) and Ctrl-C too (130).
Connecting wakes a sleeping session; the wait shows as soon as the gateway says it is
waking. A connection that closes between messages (the gateway restarted, or the session
went to sleep: spec.clientIdleTimeout) is made again when the next message is sent, which
wakes the session again; not at once, which would keep it from sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from corral.client.aio import AsyncClient, AsyncStream
from corral.client.errors import CorralError
from corral.client.events import Event, ends_turn
from corral.client.render import EventRenderer
from corral.client.sessions import Ref
from corral.client.terminal import InterruptOnCtrlC

if TYPE_CHECKING:
    from prompt_toolkit.history import History
    from rich.console import Console

CLOSED: Event = {"type": "closed"}
CLOSED_AT_PROMPT = (
    "[dim]the connection closed (the gateway restarted, or the session went to sleep); "
    "your next message connects again[/]"
)
PROMPT = "you> "


def history_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "corral" / "chat-history"


def _history() -> History:
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


class Chat:
    def __init__(self, stream: AsyncStream, agent: str | None, out: Console) -> None:
        self.stream = stream
        self.agent = agent
        self.out = out
        self.renderer = EventRenderer(out)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.at_prompt = False
        self.waking = False  # the gateway said it is waking the session; nothing since
        self.reader = asyncio.create_task(self.read())

    @property
    def connected(self) -> bool:
        return not self.reader.done()

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader
        await self.stream.close()

    async def reconnect(self, stream: AsyncStream) -> None:
        """Go on over `stream`, a new connection; whatever the old one left is dropped."""
        await self.close()
        self.stream = stream
        self.events = asyncio.Queue()
        self.waking = False
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        """Queue every event; a `waking` that comes while the prompt is up shows at once."""
        from prompt_toolkit.application import run_in_terminal

        try:
            async for event in self.stream.events():
                shown_now = event.get("type") == "waking" or event.get("ownTurn")
                if shown_now and self.at_prompt:
                    await run_in_terminal(lambda e=event: self.renderer.render(e))  # type: ignore[misc]
                    self.waking = event.get("type") == "waking"
                    continue
                await self.events.put(event)
            if self.at_prompt:
                await run_in_terminal(lambda: self.out.print(CLOSED_AT_PROMPT, soft_wrap=True))
        finally:
            await self.events.put(CLOSED)

    async def turn(self, text: str) -> bool:
        """Send one message and show its events until its result; False if the connection
        closed."""
        await self.stream.send(text, self.agent)
        async with InterruptOnCtrlC(lambda: self.stream.interrupt(self.agent), self.out):
            while True:
                event = await self.next_event()
                if event is CLOSED:
                    return False
                self.renderer.render(event)
                # A turn the agent began itself may end meanwhile: not this message's end.
                if ends_turn(event) and not event.get("ownTurn"):
                    return True

    async def next_event(self) -> Event:
        """The next event; while the session wakes, with a spinner until it answers."""
        if self.events.empty() and self.waking:
            with self.out.status(f"waiting for {self.stream.ref} to wake…"):
                event = await self.events.get()
        else:
            event = await self.events.get()
        self.waking = event.get("type") == "waking"
        return event

    async def prompt_lines(self) -> str | None:
        """The next message, or None to leave (KeyboardInterrupt on Ctrl-C)."""
        if not sys.stdin.isatty():
            line = await asyncio.to_thread(sys.stdin.readline)
            return line.rstrip("\n") if line else None
        from prompt_toolkit import PromptSession

        if not hasattr(self, "_session"):
            self._session: PromptSession[str] = PromptSession(history=_history())
        self.at_prompt = True
        try:
            return await self._session.prompt_async(PROMPT)
        except EOFError:  # Ctrl-D; Ctrl-C (KeyboardInterrupt) leaves with 130 as mid-turn
            return None
        finally:
            self.at_prompt = False

    def show_pending(self) -> None:
        """Events that came between turns (a wake notice, say)."""
        while not self.events.empty():
            event = self.events.get_nowait()
            if event is CLOSED:
                return
            self.renderer.render(event)
            self.waking = event.get("type") == "waking"


async def connect(client: AsyncClient, ref: Ref, agent: str | None) -> AsyncStream:
    stream = await client.stream(ref)
    await stream.watch(agent)
    return stream


async def chat(client: AsyncClient, ref: Ref, agent: str | None, out: Console) -> int:
    session = Chat(await connect(client, ref, agent), agent, out)
    out.print(
        f"[dim]connected to {ref}{f' (agent {agent})' if agent else ''}: Ctrl-C interrupts a "
        "reply, Ctrl-D leaves[/]",
        soft_wrap=True,
    )
    try:
        while True:
            session.show_pending()
            text = await session.prompt_lines()
            if text is None:
                return 0
            if not text.strip():
                continue
            if not session.connected:
                out.print("[dim]connecting again[/]")
                await session.reconnect(await connect(client, ref, agent))
            if not await session.turn(text):
                raise CorralError(
                    f"{ref}: the connection closed before the reply ended",
                    "run chat again; `corral transcript` shows what was said",
                )
    finally:
        await session.close()
