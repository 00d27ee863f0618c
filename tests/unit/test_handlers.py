"""The kopf handler runs on the event loop that owns the Controller, never in a thread, and
kopf does no work for handlers Corral does not have."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf
from kopf._core.actions import invocation

from corral.controller import handlers
from corral.controller.controller import RunSettings


class RecordingController:
    settings = RunSettings(leader_election=False)

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.loops: list[asyncio.AbstractEventLoop] = []

    def on_session(self, event_type: str, body: dict[str, Any]) -> None:
        self.threads.append(threading.current_thread())
        self.loops.append(asyncio.get_running_loop())  # raises off the loop's thread


async def test_session_events_reach_the_controller_on_its_event_loop() -> None:
    """Fix: a plain `def` handler is run by kopf in a thread pool, where it raced the loop
    on the work queue's asyncio.Event ("deque mutated during iteration", found by
    tests/chaos/test_chaos_bad_input.py)."""
    controller = RecordingController()
    event = {"type": "ADDED", "object": {"metadata": {"namespace": "a", "name": "s"}}}
    # The way kopf itself calls a handler.
    await invocation.invoke(
        handlers.session_event,
        settings=kopf.OperatorSettings(),
        kwargs={"event": event, "memo": kopf.Memo(controller=controller)},
    )
    assert controller.threads == [threading.current_thread()]
    assert controller.loops == [asyncio.get_running_loop()]


def test_kopf_keeps_no_diff_base_of_the_sessions() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, handlers.NoDiffBase)
    raw = {"metadata": {"name": "s", "annotations": {"a": "b"}}, "spec": {"model": "m"}}
    body = kopf.Body(raw)
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch  # nothing written to the session
    assert raw == {"metadata": {"name": "s", "annotations": {"a": "b"}}, "spec": {"model": "m"}}
