"""A scripted API server for the informer's LIST and watch calls (unit tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.kube.client import ApiError
from corral.kube.informer import Informer

JSON = dict[str, Any]
GONE = ApiError(410, "Expired", "too old resource version")


class ScriptedApi:
    """LIST answers from `lists` (one object set per relist, paginated by `limit`), watch
    streams from `watches` (events, then the exception that ends it); each is used once,
    the last list again, and a watch with no script left stays open and quiet."""

    def __init__(self, lists: list[list[JSON]], watches: list[tuple[list[JSON], Exception]]):
        self.lists = lists
        self.watches = watches
        self.list_calls: list[dict[str, str]] = []
        self.list_errors: list[ApiError] = []
        self.watch_versions: list[str] = []
        self._snapshot: list[JSON] = []
        # Scripted watches end only once this is set (the test looks at the state first).
        self.release = asyncio.Event()
        self.release.set()

    async def request(
        self, method: str, path: str, body: JSON | None = None, **kwargs: Any
    ) -> JSON:
        params: dict[str, str] = kwargs.get("params") or {}
        self.list_calls.append(dict(params))
        if self.list_errors:
            raise self.list_errors.pop(0)
        if "continue" not in params:
            self._snapshot = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        start = int(params.get("continue", "0"))
        limit = int(params.get("limit", "0")) or len(self._snapshot)
        page = self._snapshot[start : start + limit]
        meta: JSON = {"resourceVersion": "100"}
        if start + limit < len(self._snapshot):
            meta["continue"] = str(start + limit)
        return {"metadata": meta, "items": [dict(item) for item in page]}

    async def stream(
        self, path: str, params: dict[str, str], lean: bool = False
    ) -> AsyncIterator[JSON]:
        self.watch_versions.append(params["resourceVersion"])
        if not self.watches:
            await asyncio.Event().wait()
        events, ending = self.watches.pop(0)
        for event in events:
            yield event
        await self.release.wait()
        raise ending


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, JSON]] = []

    def __call__(self, kind: str, body: JSON) -> None:
        self.events.append((kind, body))

    def of(self, kind: str) -> list[str]:
        return [b["metadata"]["name"] for k, b in self.events if k == kind]


async def run_until(informer: Informer, done: Callable[[], bool], seconds: float = 5) -> None:
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(seconds):
            while not done():  # noqa: ASYNC110 (polls a plain predicate)
                await asyncio.sleep(0.001)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
