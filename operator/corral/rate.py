"""Token buckets per key (a user, a session pod), in a bounded table: what limits how often
one caller may ask. The least recently seen keys are dropped beyond `max_keys`, so many
distinct callers cannot grow memory without limit."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class KeyedBuckets:
    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> int | None:
        """Take one token of `key`'s bucket: None when there was one, else the whole
        seconds to wait for the next."""
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate)) if self.rate > 0 else 60
        bucket.tokens -= 1.0
        return None
