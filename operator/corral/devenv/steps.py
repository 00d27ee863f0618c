"""The progress display of `corral up`: one line per step, with what it is doing while it
runs (a spinner on a terminal) and how long it took when done."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.status import Status


@dataclass
class Steps:
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    timings: list[tuple[str, float]] = field(default_factory=list)
    _status: Status | None = None
    _what: str = ""

    @contextmanager
    def step(self, what: str) -> Iterator[Steps]:
        started = time.monotonic()
        self._what = what
        if self.console.is_terminal:
            self._status = self.console.status(f"{what}…")
            self._status.start()
        else:
            self.console.print(f"… {what}")
        try:
            yield self
        except BaseException:
            self._end()
            self.console.print(f"[red]✗[/] {what} ({time.monotonic() - started:.0f}s)")
            raise
        self._end()
        seconds = time.monotonic() - started
        self.timings.append((what, seconds))
        self.console.print(f"[green]✓[/] {what} ({_duration(seconds)})")

    def update(self, detail: str) -> None:
        """What the current step is at (shown beside it on a terminal)."""
        if self._status is not None:
            self._status.update(f"{self._what}… {detail}")

    def note(self, text: str) -> None:
        self.console.print(text)

    def _end(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
