"""One builder at a time per cache entry, across processes on this machine.

Two checkouts set up at once (a CI job beside a developer's, or `hack/setup.sh` beside a
test run) would otherwise build the same entry into the same staging folder: the first
to finish renames it away and the second finds its binaries gone. The lock is an
advisory `flock` on a file beside the entry, so a crashed builder never leaves it held;
whoever waited checks the cache again before building.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def building(entry: Path, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the build lock of cache entry `entry` (a folder) for the `with` block."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{what}: another process on this machine is building it; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
