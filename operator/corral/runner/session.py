"""The agents of one runner process, addressed by name, and their shared lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from corral.runner.agent import AgentState, AgentWorker
from corral.runner.status import build_status


class UnknownAgent(KeyError):
    pass


class ClientSocket:
    """One connected WebSocket client, and when it last said something (monotonic)."""

    def __init__(self) -> None:
        self.last_message = time.monotonic()

    def heard(self) -> None:
        self.last_message = time.monotonic()


def never_idle() -> float | None:
    return None


class RunnerSession:
    def __init__(
        self,
        pattern: str,
        workers: Sequence[AgentWorker],
        *,
        fake_api: bool,
        client_idle_seconds: Callable[[], float | None] = never_idle,
    ) -> None:
        if not workers:
            raise ValueError("a runner needs at least one agent")
        self.pattern = pattern
        self.workers = {w.name: w for w in workers}
        self.fake_api = fake_api
        self.started_at = datetime.now(UTC)
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # WebSocket clients connected now: someone is talking to the session, so it is in
        # use (activity) even between messages, for spec.clientIdleTimeout after each
        # client's last message (read live; None: for as long as it stays connected).
        self._sockets: set[ClientSocket] = set()
        self._client_idle_seconds = client_idle_seconds
        self._socket_listeners: list[Callable[[], None]] = []

    def add_socket_listener(self, listener: Callable[[], None]) -> None:
        self._socket_listeners.append(listener)

    @property
    def connected_clients(self) -> int:
        return len(self._sockets)

    @contextlib.contextmanager
    def client_socket(self) -> Iterator[ClientSocket]:
        """Count one connected WebSocket client for as long as the block runs."""
        client = ClientSocket()
        self._sockets.add(client)
        self._notify_sockets()
        try:
            yield client
        finally:
            self._sockets.discard(client)
            self._notify_sockets()

    def _notify_sockets(self) -> None:
        for listener in self._socket_listeners:
            listener()

    def clients_in_use(self) -> int:
        """Connected clients that count as activity: those heard from within
        spec.clientIdleTimeout (all, without one)."""
        limit = self._client_idle_seconds()
        if limit is None:
            return len(self._sockets)
        now = time.monotonic()
        return sum(1 for client in self._sockets if now - client.last_message < limit)

    def in_use(self) -> bool:
        """An agent is working (on a message, or a turn of its CLI's own), or a client is
        connected (and heard from within spec.clientIdleTimeout)."""
        return self.clients_in_use() > 0 or any(w.in_use for w in self.workers.values())

    @property
    def first(self) -> AgentWorker:
        return next(iter(self.workers.values()))

    def agent(self, name: str | None) -> AgentWorker:
        """The named agent; without a name, the only (or first) one."""
        if name is None:
            return self.first
        try:
            return self.workers[name]
        except KeyError:
            known = ", ".join(self.workers)
            raise UnknownAgent(f"no agent {name!r}; this session has: {known}") from None

    def start(self) -> None:
        for worker in self.workers.values():
            self._tasks.append(asyncio.create_task(worker.run(), name=f"agent-{worker.name}"))

    async def wait_spawned(self) -> None:
        """Until every agent's first CLI process was started (or failed to start)."""
        await asyncio.gather(*(w.spawned.wait() for w in self.workers.values()))

    async def wait_started(self) -> None:
        await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))

    def starting(self) -> bool:
        """Some agent has not started yet (nor given up)."""
        return any(not w.ready.is_set() for w in self.workers.values())

    def readiness(self) -> tuple[bool, str]:
        """Ready when the runner can serve requests: it is not stopping, every agent has
        started once, and some agent's CLI is connected. A busy agent is ready: a message
        to it gets 409 (a served request) and `/v1/interrupt` must always reach it; whether
        an agent is idle is `state` in status and the `corral_runner_busy` metric."""
        if self.stopping:
            return False, "shutting down"
        states = {w.name: w.state for w in self.workers.values()}
        described = ", ".join(f"{n}={s}" for n, s in states.items())
        if any(s == AgentState.STARTING for s in states.values()):
            return False, "agents starting: " + described
        if any(s in (AgentState.IDLE, AgentState.BUSY) for s in states.values()):
            return True, "ready"
        return False, "no agent connected: " + described

    def status(self) -> dict[str, Any]:
        return build_status(
            pattern=self.pattern,
            agents=[w.snapshot() for w in self.workers.values()],
            stopping=self.stopping,
            ready=self.readiness()[0],
            started_at=self.started_at,
            fake_api=self.fake_api,
        )

    async def shutdown(self, drain: float) -> None:
        """Finish (or interrupt) running messages, then stop every CLI cleanly."""
        self.stopping = True
        await asyncio.gather(*(w.stop(drain) for w in self.workers.values()))
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 15)
