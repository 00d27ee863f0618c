"""Refusals reach the session's author as Warning Events on the AgentSession, rate-limited.

An agent that loops on a refused host must not flood the API server: at most one Event per
session and host per `per_host_seconds`, and at most `per_session` Events per session per
`window_seconds`; the rest are only logged and counted. Memory is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from corral.gateway.egress_index import Caller
from corral.kube.events import GATEWAY_COMPONENT, EventTarget, event_manifest

log = logging.getLogger("corral.gateway.egress")
MAX_TRACKED = 10_000
MAX_MESSAGE = 1000

PostEvent = Callable[[Caller, str], Awaitable[Any]]


class RefusalReporter:
    def __init__(
        self,
        post: PostEvent,
        per_host_seconds: float = 60.0,
        per_session: int = 10,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.post = post
        self.per_host_seconds = per_host_seconds
        self.per_session = per_session
        self.window_seconds = window_seconds
        self.clock = clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.suppressed = 0

    def should_report(self, caller: Caller, host: str) -> bool:
        now = self.clock()
        key = (caller.uid, host)
        last = self._last.get(key)
        if last is not None and now - last < self.per_host_seconds:
            self.suppressed += 1
            return False
        started, count = self._windows.get(caller.uid, (now, 0))
        if now - started >= self.window_seconds:
            started, count = now, 0
        if count >= self.per_session:
            self.suppressed += 1
            return False
        self._remember(self._last, key, now)
        self._remember(self._windows, caller.uid, (started, count + 1))
        return True

    @staticmethod
    def _remember(store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > MAX_TRACKED:
            store.popitem(last=False)

    def report(self, caller: Caller, host: str, message: str) -> None:
        """Post an Event in the background when the limits allow one."""
        if not self.should_report(caller, host):
            return
        task = asyncio.create_task(self._post(caller, message[:MAX_MESSAGE]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, caller: Caller, message: str) -> None:
        try:
            await self.post(caller, message)
        except Exception as error:  # an Event is best effort; the refusal stands
            log.warning("could not post the refusal Event", extra={"fields": {"error": str(error)}})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


def refusal_event(caller: Caller, message: str, now: datetime | None = None) -> dict[str, Any]:
    """The Event manifest: on the AgentSession, so `kubectl describe` shows it."""
    target = EventTarget(caller.namespace, caller.name, caller.uid)
    # What the session asked for is in the message: printable only in `kubectl describe`.
    printable = "".join(c if c.isprintable() else "?" for c in message)
    return event_manifest(
        target, "EgressRefused", printable, GATEWAY_COMPONENT, warning=True, action="Egress",
        now=now,
    )  # fmt: skip
