"""Moving bytes between two sockets on the event loop, as cheaply as Linux allows.

Each direction of a tunnel is `splice(2)` from the source socket into a pipe and from the
pipe into the destination socket: the bytes never enter Python (no copy into user space).
Each direction is driven by the loop's readiness callbacks, no coroutine per chunk, which
is what lets one proxy process come close to a direct connection. Backpressure is the
pipe: while the destination does not take what the pipe holds, the source is not read
(its reader is unregistered). One watchdog per tunnel closes it after `idle` seconds
without a byte either way. Where os.splice does not exist (not Linux), the same machine
copies through a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Mapping

PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default; the kernel may give less
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
COPY_BUFFER = 256 * 1024
# Moves per readiness callback before giving the loop back (fairness between tunnels).
MOVES_PER_CALLBACK = 16


class _Direction:
    """src -> dst, driven by readiness callbacks; `done` gets True at EOF, False on error."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        count: Callable[[int], None] | None,
        touch: Callable[[], None],
        splice: bool = SPLICE,
    ) -> None:
        self.loop = loop
        self.src, self.dst = src.fileno(), dst.fileno()
        self.dst_sock = dst
        self.count = count
        self.touch = touch
        self.done: asyncio.Future[bool] = loop.create_future()
        self.pending = 0  # bytes read and not yet written
        self.reading = self.writing = False
        self.splice = splice
        if splice:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
        else:
            self.buffer = memoryview(bytearray(COPY_BUFFER))
            self.offset = 0
        self._want_read()

    def _want_read(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if not self.reading:
            self.loop.add_reader(self.src, self._move)
            self.reading = True

    def _want_write(self) -> None:
        # Backpressure: the source is not read while the destination does not take.
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False
        if not self.writing:
            self.loop.add_writer(self.dst, self._move)
            self.writing = True

    def _read(self) -> int:
        if self.splice:
            return os.splice(self.src, self.pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
        self.offset = 0
        return os.readv(self.src, [self.buffer])

    def _write(self) -> int:
        if self.splice:
            return os.splice(self.pipe_r, self.dst, self.pending, flags=_SPLICE_FLAGS)
        written = os.write(self.dst, self.buffer[self.offset : self.offset + self.pending])
        self.offset += written
        return written

    def _move(self) -> None:
        try:
            for _ in range(MOVES_PER_CALLBACK):
                if self.pending == 0:
                    try:
                        moved = self._read()
                    except BlockingIOError:
                        self._want_read()
                        return
                    if moved == 0:
                        with contextlib.suppress(OSError):
                            self.dst_sock.shutdown(socket.SHUT_WR)  # pass the half-close on
                        self._finish(True)
                        return
                    self.pending = moved
                    self.touch()
                    if self.count is not None:
                        self.count(moved)
                try:
                    self.pending -= self._write()
                except BlockingIOError:
                    self._want_write()
                    return
            if self.pending:
                self._want_write()
            else:
                self._want_read()
        except OSError:
            self._finish(False)

    def _finish(self, ok: bool) -> None:
        self.stop()
        if not self.done.done():
            self.done.set_result(ok)

    def stop(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False
        if self.splice and self.pipe_r >= 0:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1


async def tunnel(
    client: socket.socket,
    upstream: socket.socket,
    idle: float,
    counters: Mapping[str, Callable[[int], None]] | None = None,
    splice: bool = SPLICE,
) -> None:
    """Both directions until both have ended, or until one fails or the tunnel idles."""
    loop = asyncio.get_running_loop()
    counters = counters or {}
    last = [loop.time()]

    def touch() -> None:
        last[0] = loop.time()

    directions: list[_Direction] = []
    try:
        # Made inside the try: if the second cannot get its pipe (no file descriptors
        # left), the first is stopped, its pipe closed and its reader taken off the loop.
        directions.append(_Direction(loop, client, upstream, counters.get("up"), touch, splice))
        directions.append(_Direction(loop, upstream, client, counters.get("down"), touch, splice))
        pending: set[asyncio.Future[bool]] = {d.done for d in directions}
        while pending:
            left = idle - (loop.time() - last[0])
            if left <= 0:
                return  # idle (or a destination that stopped reading)
            done, pending = await asyncio.wait(
                pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if any(future.result() is False for future in done):
                return
    finally:
        for direction in directions:
            direction.stop()
