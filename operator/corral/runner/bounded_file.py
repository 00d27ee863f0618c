"""Reading a small file the agent could have replaced with something else.

The agent can write the session's state volume: what the runner keeps there may be a
FIFO (an open for reading blocks until a writer comes), /dev/zero behind a link (a read
never ends) or simply huge. Only a regular file is read, and at most `limit` bytes of it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes; None when it is missing. ValueError when it is not a regular file
    or holds more than `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def replace_file(path: Path, data: bytes, *, durable: bool) -> None:
    """Write `data` to `path` through a temporary file renamed over it: a reader sees the
    old or the new file, never a torn one. Whatever the agent left at the temporary name
    (a FIFO would block the write, a link would redirect it) is removed first, and the
    file made anew, never followed. `durable`: on disk (fsync) before this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
