"""Moving bytes between two sockets on the event loop, as cheaply as Linux allows.

Each direction of a tunnel is `splice(2)` from the source socket into a pipe and from the
pipe into the destination socket: the bytes never enter Python (no copy into user space),
which is what lets one proxy process keep up with a direct connection. Backpressure is the
pipe: while the destination does not take what the pipe holds, the source is not read.
Where os.splice does not exist (not Linux), the same loop copies through a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size's default; the kernel may give less
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
COPY_BUFFER = 256 * 1024


@dataclass
class Activity:
    """When a byte last moved either way (shared by both directions of one tunnel)."""

    last: float = 0.0
    counters: Mapping[str, Callable[[int], None]] = field(default_factory=dict)


async def ready(sock: socket.socket, writable: bool, seconds: float) -> bool:
    """Until `sock` is readable (or writable); False after `seconds`."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    fd = sock.fileno()
    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(seconds):
            await future
        return True
    except TimeoutError:
        return False
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _wait_source(sock: socket.socket, activity: Activity, idle: float) -> bool:
    """Until the source has bytes; False once the whole tunnel has been idle `idle` s."""
    loop = asyncio.get_running_loop()
    while True:
        left = idle - (loop.time() - activity.last)
        if left <= 0:
            return False
        if await ready(sock, False, left):
            return True


def _half_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


async def pump(
    src: socket.socket,
    dst: socket.socket,
    activity: Activity,
    direction: str,
    idle: float,
) -> bool:
    """Move bytes src -> dst until EOF (True: dst half-closed) or idle/broken (False)."""
    if SPLICE:
        return await _splice_pump(src, dst, activity, direction, idle)
    return await _copy_pump(src, dst, activity, direction, idle)


async def _splice_pump(
    src: socket.socket, dst: socket.socket, activity: Activity, direction: str, idle: float
) -> bool:
    loop = asyncio.get_running_loop()
    count = activity.counters.get(direction)
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
    in_pipe = 0
    try:
        while True:
            if in_pipe == 0:
                try:
                    moved = os.splice(src.fileno(), pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    if not await _wait_source(src, activity, idle):
                        return False
                    continue
                if moved == 0:
                    _half_close(dst)
                    return True
                in_pipe = moved
                activity.last = loop.time()
                if count is not None:
                    count(moved)
            try:
                in_pipe -= os.splice(pipe_r, dst.fileno(), in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # The destination is not reading: stop reading the source (backpressure).
                if not await ready(dst, True, idle):
                    return False
    except OSError:
        return False
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


async def _copy_pump(
    src: socket.socket, dst: socket.socket, activity: Activity, direction: str, idle: float
) -> bool:
    loop = asyncio.get_running_loop()
    count = activity.counters.get(direction)
    buffer = bytearray(COPY_BUFFER)
    try:
        while True:
            try:
                got = src.recv_into(buffer)
            except BlockingIOError:
                if not await _wait_source(src, activity, idle):
                    return False
                continue
            if got == 0:
                _half_close(dst)
                return True
            activity.last = loop.time()
            if count is not None:
                count(got)
            async with asyncio.timeout(idle):
                await loop.sock_sendall(dst, memoryview(buffer)[:got])
    except (OSError, TimeoutError):
        return False


async def tunnel(
    client: socket.socket,
    upstream: socket.socket,
    idle: float,
    counters: Mapping[str, Callable[[int], None]] | None = None,
) -> None:
    """Both directions until both have ended, or until one fails or the tunnel idles."""
    activity = Activity(asyncio.get_running_loop().time(), counters or {})
    pumps = [
        asyncio.create_task(pump(client, upstream, activity, "up", idle)),
        asyncio.create_task(pump(upstream, client, activity, "down", idle)),
    ]
    try:
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.result() is False for t in done):
                break
    finally:
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(BaseException):
                await task
