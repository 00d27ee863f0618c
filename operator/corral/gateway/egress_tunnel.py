"""Moving bytes between two sockets on the event loop.

Each direction of a tunnel reads what its source holds (up to 256 KiB) into a buffer and
writes it to its destination, driven by the loop's readiness callbacks: no coroutine per
chunk. Copying through the proxy costs its own core more than `splice(2)` did (about 0.19
against 0.08 CPU-s per GiB), but the bytes then reach each endpoint as a direct connection
delivers them: spliced, the endpoints (a session's process inside its CPU limit, the
remote server) spent up to 90 % more CPU per byte in most runs, and that, not the proxy's
core, is what held a tunnel under 0.8x a direct connection (docs/egress.md).

Buffers are lent from a pool only while a direction holds bytes its destination has not
taken, so quiet tunnels hold none. Backpressure: while the destination does not take what
the buffer holds, the source is not read (its reader is unregistered). One watchdog per
tunnel closes it after `idle` seconds without a byte either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

# Measured against 64 KiB and 1 MiB (session 29): 64 KiB makes the proxy's core the
# limit in downloads; 1 MiB moves no faster and a backpressured direction holds more.
BUFFER_SIZE = 256 * 1024
# Free buffers kept for the next chunk (a fresh one is zeroed: another pass over 256 KiB).
POOL_KEEPS = 16
# Moves per readiness callback before giving the loop back (fairness between tunnels).
MOVES_PER_CALLBACK = 16


class BufferPool:
    """Copy buffers, lent while a direction holds bytes; at most `keep` kept when free."""

    def __init__(self, size: int = BUFFER_SIZE, keep: int = POOL_KEEPS) -> None:
        self.size = size
        self.keep = keep
        self.free: list[memoryview] = []
        self.lent = 0

    def take(self) -> memoryview:
        self.lent += 1
        return self.free.pop() if self.free else memoryview(bytearray(self.size))

    def give(self, buffer: memoryview) -> None:
        self.lent -= 1
        if len(self.free) < self.keep:
            self.free.append(buffer)


# One per process: every tunnel runs on the gateway's one event loop thread.
POOL = BufferPool()


class _Direction:
    """src -> dst, driven by readiness callbacks; `done` gets True at EOF, False on error."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        count: Callable[[int], None] | None,
        touch: Callable[[], None],
        pool: BufferPool,
    ) -> None:
        self.loop = loop
        self.src, self.dst = src.fileno(), dst.fileno()
        self.dst_sock = dst
        self.count = count
        self.touch = touch
        self.pool = pool
        self.done: asyncio.Future[bool] = loop.create_future()
        self.buffer: memoryview | None = None  # lent while it holds bytes not yet written
        self.offset = 0
        self.pending = 0  # bytes read and not yet written
        self.reading = self.writing = False
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

    def _release(self) -> None:
        if self.buffer is not None:
            self.pool.give(self.buffer)
            self.buffer = None

    def _move(self) -> None:
        try:
            for _ in range(MOVES_PER_CALLBACK):
                if self.pending == 0:
                    if self.buffer is None:
                        self.buffer = self.pool.take()
                    try:
                        moved = os.readv(self.src, [self.buffer])
                    except BlockingIOError:
                        self._release()
                        self._want_read()
                        return
                    if moved == 0:
                        with contextlib.suppress(OSError):
                            self.dst_sock.shutdown(socket.SHUT_WR)  # pass the half-close on
                        self._finish(True)
                        return
                    self.offset, self.pending = 0, moved
                    self.touch()
                    if self.count is not None:
                        self.count(moved)
                assert self.buffer is not None
                end = self.offset + self.pending
                try:
                    written = os.write(self.dst, self.buffer[self.offset : end])
                except BlockingIOError:
                    self._want_write()
                    return
                self.offset += written
                self.pending -= written
            if self.pending:
                self._want_write()
            else:
                self._release()
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
        self.pending = 0
        self._release()


async def tunnel(
    client: socket.socket,
    upstream: socket.socket,
    idle: float,
    counters: Mapping[str, Callable[[int], None]] | None = None,
    pool: BufferPool = POOL,
) -> None:
    """Both directions until both have ended, or until one fails or the tunnel idles."""
    loop = asyncio.get_running_loop()
    counters = counters or {}
    last = [loop.time()]

    def touch() -> None:
        last[0] = loop.time()

    directions: list[_Direction] = []
    try:
        directions.append(_Direction(loop, client, upstream, counters.get("up"), touch, pool))
        directions.append(_Direction(loop, upstream, client, counters.get("down"), touch, pool))
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
