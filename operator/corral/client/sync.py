"""The same client for code without an event loop: each call runs the asyncio client on a
private loop in a background thread, and streamed events come back as a plain iterator.

    with Client() as corral:
        for event in corral.send("demo/chat", "hello"):
            ...
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from corral.client.aio import AsyncClient, AsyncStream
from corral.client.events import Event, Reply
from corral.client.sessions import Ref, Session

T = TypeVar("T")


async def _next(agen: AsyncIterator[T]) -> T:
    return await anext(agen)


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            aclose: Callable[[], Coroutine[Any, Any, None]] | None = getattr(agen, "aclose", None)
            if aclose is not None:
                self.run(aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Stream:
    """A WebSocket to one session (see AsyncStream); `events()` blocks, so read it in one
    thread and `send`/`interrupt` from another if you need both at once."""

    def __init__(self, loop: _Loop, stream: AsyncStream) -> None:
        self._loop = loop
        self._stream = stream

    def send(self, text: str, agent: str | None = None) -> None:
        self._loop.run(self._stream.send(text, agent))

    def interrupt(self, agent: str | None = None) -> None:
        self._loop.run(self._stream.interrupt(agent))

    def events(self) -> Iterator[Event]:
        return self._loop.iterate(self._stream.events())

    def close(self) -> None:
        self._loop.run(self._stream.close())

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Blocking twin of AsyncClient: the same methods, the same arguments."""

    def __init__(self, **options: Any) -> None:
        self._async = AsyncClient(**options)
        self._loop = _Loop()

    @property
    def namespace(self) -> str:
        return self._async.namespace

    def close(self) -> None:
        self._loop.run(self._async.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def list(self, namespace: str | None = None, all_namespaces: bool = False) -> list[Session]:
        return self._loop.run(self._async.list(namespace, all_namespaces))

    def get(self, session: str | Ref) -> Session:
        return self._loop.run(self._async.get(session))

    def create(self, manifest: dict[str, Any], namespace: str | None = None) -> Session:
        return self._loop.run(self._async.create(manifest, namespace))

    def delete(self, session: str | Ref) -> None:
        self._loop.run(self._async.delete(session))

    def wake(self, session: str | Ref) -> Session:
        return self._loop.run(self._async.wake(session))

    def suspend(self, session: str | Ref, suspend: bool = True) -> Session:
        return self._loop.run(self._async.suspend(session, suspend))

    def resume(self, session: str | Ref) -> Session:
        return self._loop.run(self._async.resume(session))

    def wait(self, session: str | Ref, **options: Any) -> Session:
        return self._loop.run(self._async.wait(session, **options))

    def logs(self, session: str | Ref, follow: bool = False) -> Iterator[str]:
        return self._loop.iterate(self._async.logs(session, follow))

    def status(self, session: str | Ref) -> dict[str, Any]:
        return self._loop.run(self._async.status(session))

    def transcript(
        self, session: str | Ref, agent: str | None = None, limit: int = 200
    ) -> dict[str, Any]:
        return self._loop.run(self._async.transcript(session, agent, limit))

    def interrupt(self, session: str | Ref, agent: str | None = None) -> bool:
        return self._loop.run(self._async.interrupt(session, agent))

    def send(self, session: str | Ref, text: str, agent: str | None = None) -> Iterator[Event]:
        return self._loop.iterate(self._async.send(session, text, agent))

    def ask(self, session: str | Ref, text: str, agent: str | None = None) -> Reply:
        return self._loop.run(self._async.ask(session, text, agent))

    def stream(self, session: str | Ref) -> Stream:
        return Stream(self._loop, self._loop.run(self._async.stream(session)))
