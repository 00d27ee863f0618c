"""Per-user limits: requests per second (a token bucket) and concurrent open streams.

Users are keyed by their authenticated name; the tables are bounded so that many distinct
users cannot grow the gateway's memory without limit (the least recently seen are dropped).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from corral.rate import KeyedBuckets


class Limited(Exception):
    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


class UserLimits:
    def __init__(
        self,
        rate_per_second: float = 20.0,
        burst: int = 40,
        max_streams: int = 32,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.max_streams = max_streams
        self._buckets = KeyedBuckets(rate_per_second, burst, max_users, clock)
        self._streams: dict[str, int] = {}

    def take(self, user: str) -> None:
        """Count one request against `user`'s rate, or raise Limited."""
        wait = self._buckets.take(user)
        if wait is not None:
            raise Limited(
                "rate", f"user {user!r} is over {self.rate:g} requests/s (burst {self.burst})", wait
            )

    def open_stream(self, user: str) -> None:
        """Count one more open stream for `user`, or raise Limited; pair with close_stream."""
        count = self._streams.get(user, 0)
        if count >= self.max_streams:
            raise Limited(
                "streams",
                f"user {user!r} already has {count} open streams (limit {self.max_streams}); "
                "close one first",
                5,
            )
        self._streams[user] = count + 1

    def close_stream(self, user: str) -> None:
        count = self._streams.get(user, 0) - 1
        if count > 0:
            self._streams[user] = count
        else:
            self._streams.pop(user, None)
