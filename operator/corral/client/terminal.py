"""Terminal plumbing shared by the commands: a rich console, and Ctrl-C that interrupts a
turn before it leaves. Imported only when a command runs (rich is imported lazily)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # Piped output is not wrapped (a script reads whole lines).
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 100_000)


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
            self._out.print("\n[yellow]interrupting… (Ctrl-C again to leave)[/]", soft_wrap=True)
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

    def __enter__(self) -> InterruptOnCtrlC:
        import signal

        self._main = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._pressed)
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        import signal

        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if kind is asyncio.CancelledError and self._presses > 1:
            raise KeyboardInterrupt
