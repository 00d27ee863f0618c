"""A process started with `subprocess.Popen` before the event loop ran, as the anyio
process the SDK's transport expects (corral.runner.early_cli).

Its pipes are read and written without blocking, waiting on the loop's readiness
callbacks; its end is awaited on a pidfd (Linux), so no thread and no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from signal import SIGKILL, SIGTERM, Signals
from typing import IO

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

READ_CHUNK = 65536


async def _until(fd: int, *, writable: bool) -> None:
    """Until `fd` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class _PipeReader(ByteReceiveStream):
    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe: IO[bytes] | None = pipe
        os.set_blocking(pipe.fileno(), False)

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        while True:
            if self._pipe is None:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._pipe.fileno(), max_bytes)
            except BlockingIOError:
                await _until(self._pipe.fileno(), writable=False)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


class _PipeWriter(ByteSendStream):
    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe: IO[bytes] | None = pipe
        os.set_blocking(pipe.fileno(), False)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._pipe is None:
                raise anyio.ClosedResourceError
            try:
                view = view[os.write(self._pipe.fileno(), view) :]
            except BlockingIOError:
                await _until(self._pipe.fileno(), writable=True)
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(BrokenPipeError):
                self._pipe.close()
            self._pipe = None


class AdoptedProcess(Process):
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        self._popen = popen
        self._stdin = _PipeWriter(popen.stdin)
        self._stdout = _PipeReader(popen.stdout)
        self._stderr = _PipeReader(popen.stderr)

    async def wait(self) -> int:
        if self._popen.poll() is None:
            try:
                pidfd = os.pidfd_open(self._popen.pid)
            except (AttributeError, OSError):
                pidfd = -1  # no pidfd: look every 50 ms
            try:
                while self._popen.poll() is None:
                    if pidfd >= 0:
                        await _until(pidfd, writable=False)
                    else:
                        await asyncio.sleep(0.05)
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
        return self._popen.returncode

    def terminate(self) -> None:
        self.send_signal(SIGTERM)

    def kill(self) -> None:
        self.send_signal(SIGKILL)

    def send_signal(self, signal: Signals) -> None:
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal)

    async def aclose(self) -> None:
        await self._stdin.aclose()
        try:
            await self.wait()
        finally:
            await self._stdout.aclose()
            await self._stderr.aclose()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def stdin(self) -> ByteSendStream:
        return self._stdin

    @property
    def stdout(self) -> ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        return self._stderr
