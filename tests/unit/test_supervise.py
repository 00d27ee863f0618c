"""The operator process's exit code: non-zero whenever a life-long task ends by itself."""

from __future__ import annotations

import asyncio

import aiohttp

from corral.controller.cli import supervise


async def forever() -> None:
    await asyncio.Event().wait()


async def dropped_connection() -> None:
    await asyncio.sleep(0)
    raise aiohttp.ServerDisconnectedError()


async def returns() -> None:
    await asyncio.sleep(0)


async def run(*work: object, stop_after: float | None = None) -> int:
    tasks = [asyncio.create_task(w) for w in work]  # type: ignore[arg-type]
    stop = asyncio.Event()
    if stop_after is not None:
        asyncio.get_running_loop().call_later(stop_after, stop.set)
    try:
        async with asyncio.timeout(10):
            return await supervise(tasks, stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_unexpected_error_in_a_background_task_exits_non_zero() -> None:
    """Fix: the controller task died of a ServerDisconnectedError and the process exited 0,
    so Kubernetes did not restart it."""
    assert await run(forever(), dropped_connection()) == 1


async def test_a_background_task_that_just_returns_exits_non_zero() -> None:
    assert await run(forever(), returns()) == 1


async def test_a_requested_stop_exits_zero() -> None:
    assert await run(forever(), forever(), stop_after=0.01) == 0
