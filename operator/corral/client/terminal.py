"""Terminal plumbing shared by the commands: a rich console, and Ctrl-C that interrupts a
turn before it leaves. Imported only when a command runs (rich is imported lazily)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Control characters shown, one for one (so a styled Text keeps its spans), instead of
# obeyed: C0 as their Unicode control pictures (ESC as U+241B), DEL as U+2421, C1 as U+FFFD.
# Tab and newline stay; a carriage return becomes a space.
_SHOWN = str.maketrans(
    {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)}
    | {0x0D: 0x20, 0x7F: 0x2421}
    | dict.fromkeys(range(0x80, 0xA0), 0xFFFD)
)
# Retries an interrupt may take once its command is leaving (a second Ctrl-C): the turn
# would run on, spending, if it were cancelled before it reached the runner.
INTERRUPT_GRACE_SECONDS = 5.0


def printable(text: str) -> str:
    """`text` with its control characters shown, not obeyed: what an agent (or a prompt
    injection it read) prints must not write the clipboard (OSC 52), retitle the terminal,
    move the cursor or erase what a tool did."""
    return text.translate(_SHOWN)


def console(stderr: bool = False) -> Console:
    from rich.console import Console
    from rich.text import Text

    class ShowingConsole(Console):
        """Every string and Text printed has its control characters shown (printable);
        rich's own styling is added after, so colours still work."""

        def print(self, *objects: Any, **kwargs: Any) -> None:
            shown: list[Any] = []
            for item in objects:
                if isinstance(item, str):
                    item = printable(item)
                elif isinstance(item, Text):
                    item = item.copy()
                    item.plain = printable(item.plain)
                shown.append(item)
            super().print(*shown, **kwargs)

    # Piped output is not wrapped (a script reads whole lines).
    stream = sys.stderr if stderr else sys.stdout
    return ShowingConsole(
        stderr=stderr, highlight=False, width=None if stream.isatty() else 100_000
    )


class InterruptOnCtrlC:
    """While active, the first Ctrl-C calls `interrupt` (the turn ends with its result) and
    a second one leaves (KeyboardInterrupt)."""

    def __init__(self, interrupt: Callable[[], Awaitable[None]], out: Console) -> None:
        self._interrupt = interrupt
        self._out = out
        self._presses = 0
        self._task: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None

    def _pressed(self) -> None:
        self._presses += 1
        if self._presses == 1:
            # On stderr: `send --json` writes JSON lines to stdout.
            console(stderr=True).print(
                "\n[yellow]interrupting… (Ctrl-C again to leave)[/]", soft_wrap=True
            )
            self._task = asyncio.get_running_loop().create_task(self._send())
        elif self._main is not None:
            self._main.cancel()

    async def _send(self) -> None:
        from corral.client.errors import CorralError

        try:
            await self._interrupt()
        except CorralError as error:
            from rich.text import Text

            self._out.print(Text(f"interrupt failed: {error}", style="red"), soft_wrap=True)

    async def __aenter__(self) -> InterruptOnCtrlC:
        import signal

        self._main = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._pressed)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        import contextlib
        import signal

        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        if self._task is not None and not self._task.done():
            # Let the interrupt reach the runner (a quick second Ctrl-C must not cancel
            # it: the turn would run on, and the next message find the agent busy).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), INTERRUPT_GRACE_SECONDS)
        if kind is asyncio.CancelledError and self._presses > 1:
            raise KeyboardInterrupt
