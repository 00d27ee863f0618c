"""The blocking client runs the asyncio one on a loop of its own: results, errors and
streams cross over, and a stream left early is closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral.client.errors import CorralError
from corral.client.sync import _Loop


def test_results_errors_and_streams_cross_the_thread() -> None:
    loop = _Loop()
    closed: list[bool] = []

    async def value() -> int:
        await asyncio.sleep(0)
        return 42

    async def failing() -> None:
        raise CorralError("no such session", "check the name")

    async def events() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    try:
        assert loop.run(value()) == 42
        with pytest.raises(CorralError, match="no such session; check the name"):
            loop.run(failing())
        assert list(loop.iterate(_take(events(), 3))) == [0, 1, 2]
        for i in loop.iterate(events()):
            if i == 2:
                break  # the consumer leaves early: the async generator is closed
        assert closed == [True, True]
    finally:
        loop.stop()


async def _take(source: AsyncIterator[int], n: int) -> AsyncIterator[int]:
    async for item in source:
        if n == 0:
            break
        yield item
        n -= 1
    await source.aclose()  # type: ignore[attr-defined]
