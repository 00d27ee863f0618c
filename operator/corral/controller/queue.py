"""A deduplicating work queue with delayed adds, in the manner of client-go's workqueue.

A key is never handed to two workers at once; adding a key that waits or is being
processed only marks it dirty, so bursts of watch events collapse into one reconcile.
Delayed adds (idle deadlines, TTLs, retries) live in one heap served by one task, so
thousands of sessions cost no timers of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._ready: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._urgent: set[K] = set()  # dirty while processing, and due by a deadline
        self._has_items = asyncio.Event()
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._counter = itertools.count()
        self._delay_changed = asyncio.Event()
        # When each key was first marked dirty: how long it waited (reconcile lag).
        self.enqueued_at: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: K, urgent: bool = False) -> None:
        """Queue `key`; `urgent` keys (a deadline that came due) go ahead of the others, so
        a burst of watch events cannot make an idle scale-down or a TTL late."""
        if key in self._dirty:
            if urgent and key in self._ready and self._ready[0] != key:
                self._ready.remove(key)
                self._ready.appendleft(key)
            return
        self._dirty.add(key)
        self.enqueued_at.setdefault(key, time.monotonic())
        if key in self._processing:
            if urgent:
                self._urgent.add(key)
            return  # re-queued by done()
        if urgent:
            self._ready.appendleft(key)
        else:
            self._ready.append(key)
        self._has_items.set()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        when = time.monotonic() + delay
        current = self._due.get(key)
        if current is not None and current <= when:
            return  # an earlier wake-up is already scheduled
        self._due[key] = when
        heapq.heappush(self._delayed, (when, next(self._counter), key))
        self._delay_changed.set()

    async def get(self) -> K:
        while not self._ready:
            self._has_items.clear()
            await self._has_items.wait()
        key = self._ready.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            if key in self._urgent:
                self._ready.appendleft(key)
            else:
                self._ready.append(key)
            self._has_items.set()
        else:
            self.enqueued_at.pop(key, None)
        self._urgent.discard(key)

    async def run_delays(self) -> None:
        """Move delayed keys to the ready queue when due; runs for the operator's life."""
        while True:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                when, _, key = heapq.heappop(self._delayed)
                if self._due.get(key) == when:
                    del self._due[key]
                    self.add(key, urgent=True)
            timeout = self._delayed[0][0] - now if self._delayed else None
            self._delay_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delay_changed.wait(), timeout)
