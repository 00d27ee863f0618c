"""A deduplicating work queue with delayed adds, in the manner of client-go's workqueue.

A key is never handed to two workers at once; adding a key that waits or is being
processed only marks it dirty, so bursts of watch events collapse into one reconcile.
Delayed adds (idle deadlines, TTLs, retries) live in one heap served by one task, so
thousands of sessions cost no timers of their own. Each key carries what first queued it
(its cause, a short label the operator counts reconciles by).
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

# Replaced deadlines the delay heap may hold beyond twice its live ones before a compaction.
STALE_SLACK = 64
# The cause of an add that names none, and of the deadlines decisions ask for.
CHANGE = "change"
DEADLINE = "deadline"


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        # Waiting keys, each with the number of its one live entry in `_urgent_ready` or
        # `_ready` (deadlines first). A key moved ahead gets a new entry; the one it leaves
        # behind no longer matches and is skipped when reached, so moving is O(1) (a search
        # of a backlog of thousands for every deadline that came due was not).
        self._waiting: dict[K, int] = {}
        self._urgent_ready: deque[tuple[K, int]] = deque()
        self._ready: deque[tuple[K, int]] = deque()
        self._entries = itertools.count()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._urgent: set[K] = set()  # dirty keys due by a deadline (waiting or processing)
        self._has_items = asyncio.Event()
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._due_cause: dict[K, str] = {}  # DEADLINE: what the last decision asked for
        self._cause: dict[K, str] = {}  # what first queued each dirty key
        self._counter = itertools.count()
        self._delay_changed = asyncio.Event()
        # When each key was first marked dirty: how long it waited (reconcile lag).
        self.enqueued_at: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def _enqueue(self, key: K, urgent: bool) -> None:
        entry = next(self._entries)
        self._waiting[key] = entry
        (self._urgent_ready if urgent else self._ready).append((key, entry))
        self._has_items.set()

    def add(self, key: K, urgent: bool = False, cause: str = CHANGE) -> None:
        """Queue `key`; `urgent` keys (a deadline that came due) go ahead of the others, in
        the order they came due, so a burst of watch events cannot make an idle scale-down
        or a TTL late."""
        if key in self._dirty:
            if urgent and key not in self._urgent:
                self._urgent.add(key)
                if key in self._waiting:  # else done() queues it ahead
                    self._enqueue(key, urgent=True)
            return
        self._dirty.add(key)
        self._cause[key] = cause
        self.enqueued_at.setdefault(key, time.monotonic())
        if urgent:
            self._urgent.add(key)
        if key in self._processing:
            return  # re-queued by done()
        self._enqueue(key, urgent)

    def add_after(self, key: K, delay: float, cause: str = CHANGE) -> None:
        if delay <= 0:
            self.add(key, cause=cause)
            return
        when = time.monotonic() + delay
        current = self._due.get(key)
        if current is not None and current <= when:
            return  # an earlier wake-up is already scheduled
        self._due[key] = when
        self._due_cause[key] = cause
        heapq.heappush(self._delayed, (when, next(self._counter), key))
        if len(self._delayed) > 2 * len(self._due) + STALE_SLACK:
            self._compact()
        self._delay_changed.set()

    def _compact(self) -> None:
        """Drop the heap's entries that no longer match `_due` (replaced deadlines). A busy
        session's decision moves its idle deadline on every reconcile, and each move leaves
        one behind until its time, which can be an hour away."""
        self._delayed = [(when, next(self._counter), key) for key, when in self._due.items()]
        heapq.heapify(self._delayed)

    def set_deadline(self, key: K, delay: float | None) -> None:
        """The one deadline a reconcile of `key` just asked for (None: none), replacing the
        one its previous reconcile asked for. Decisions are made afresh each time and ask
        for every deadline they still need, so an older one is moot: a status held back
        for a pod that has started since, a countdown that a newer picture moved, each
        cost a reconcile that decided nothing. Other wake-ups (retries) are kept."""
        if self._due_cause.get(key) == DEADLINE:
            del self._due[key]  # its heap entry no longer matches: skipped when reached
            del self._due_cause[key]
        if delay is not None:
            self.add_after(key, delay, DEADLINE)

    def cause_of(self, key: K) -> str:
        """What first queued `key`, once, right after `get` returned it."""
        return self._cause.pop(key, CHANGE)

    async def get(self) -> K:
        while True:
            while not (self._urgent_ready or self._ready):
                self._has_items.clear()
                await self._has_items.wait()
            key, entry = (self._urgent_ready or self._ready).popleft()
            if self._waiting.get(key) == entry:
                break  # else an entry left behind by a move ahead: skipped
        del self._waiting[key]
        self._dirty.discard(key)
        self._urgent.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._enqueue(key, urgent=key in self._urgent)
        else:
            self.enqueued_at.pop(key, None)

    async def run_delays(self) -> None:
        """Move delayed keys to the ready queue when due; runs for the operator's life."""
        while True:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                when, _, key = heapq.heappop(self._delayed)
                if self._due.get(key) == when:
                    del self._due[key]
                    self.add(key, urgent=True, cause=self._due_cause.pop(key))
            timeout = self._delayed[0][0] - now if self._delayed else None
            self._delay_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delay_changed.wait(), timeout)
