"""The work queue: dedup, one worker per key, delayed keys ahead of the backlog."""

from __future__ import annotations

import asyncio

from corral.controller.queue import WorkQueue


async def test_a_key_is_queued_once_and_requeued_when_dirty_during_processing() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 1
    key = await queue.get()
    queue.add("a")  # changed while being reconciled
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert len(queue) == 1


async def test_a_due_deadline_overtakes_a_backlog() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for i in range(100):
        queue.add(f"busy-{i}")
    delays = asyncio.create_task(queue.run_delays())
    try:
        queue.add_after("deadline", 0.05)
        await asyncio.sleep(0.2)
        assert await queue.get() == "deadline"
    finally:
        delays.cancel()


async def test_an_already_queued_key_moves_ahead_when_its_deadline_comes() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for name in ("x", "y", "z"):
        queue.add(name)
    queue.add("z", urgent=True)
    assert [await queue.get() for _ in range(3)] == ["z", "x", "y"]
