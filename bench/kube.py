"""Benchmark plumbing: an async API client, timestamped watches, API server request counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from corral.cluster import control_plane
from corral.kube.client import KubeClient, load_connection, resource_path

JSON = dict[str, Any]
REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "CREATE", "UPDATE", "APPLY"}


@contextlib.contextmanager
def kwok_nodes(layout: control_plane.Layout, count: int) -> Iterator[tuple[str, ...]]:
    """`count` KWOK nodes for a benchmark's sessions, deleted when it ends, however it
    ends: the default cluster is the tests' too, and they expect only their own nodes."""
    names = tuple(f"kwok-bench-{i}" for i in range(count))
    # The last benchmark's nodes may still be going (deleted without waiting): applied
    # now, they would be deleted under this one, its pods never Running.
    nodes = [f"node/{name}" for name in names]
    control_plane.kubectl(layout, "wait", "--for=delete", "--timeout=120s", *nodes)
    manifest = control_plane.fake_nodes_manifest(names)
    control_plane.kubectl(layout, "apply", "-f", "-", stdin=manifest)
    try:
        yield names
    finally:
        control_plane.kubectl(layout, "delete", "node", *names, "--wait=false")


def client_for(kubeconfig: Path, max_connections: int = 64) -> KubeClient:
    return KubeClient(load_connection(str(kubeconfig)), max_connections=max_connections)


async def request_counts(client: KubeClient) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource), watches excluded."""
    async with client._session.get("/metrics") as response:
        text = await response.text()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        match = REQUEST_LINE.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match["labels"]))
        verb = labels.get("verb", "")
        if verb in ("WATCH", "CONNECT"):
            continue
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(verb, resource)] += int(float(match["value"]))
    return counts


def writes(delta: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter({k: v for k, v in delta.items() if k[0] in WRITE_VERBS and v > 0})


@dataclass
class Watch:
    """Records, per object name, when each kind of change was first seen (wall clock)."""

    kind: str
    namespace: str
    added: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    bodies: dict[str, JSON] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # object name -> session label
    on_event: Callable[[str, JSON], None] | None = None
    _task: asyncio.Task[None] | None = None
    _synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, client: KubeClient) -> None:
        self._task = asyncio.create_task(self._run(client))
        await self._synced.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, client: KubeClient) -> None:
        path = resource_path(self.kind, self.namespace)
        version = ""
        while True:
            if not version:
                listed = await client.request("GET", path)
                version = listed["metadata"]["resourceVersion"]
                for item in listed.get("items", []):
                    self._record("ADDED", item)
                self._synced.set()
            try:
                async for event in _stream(client, path, version):
                    version = event["object"]["metadata"].get("resourceVersion", version)
                    self._record(event["type"], event["object"])
            except (TimeoutError, OSError, ValueError):
                version = ""

    def _record(self, kind: str, body: JSON) -> None:
        now = time.time()
        name = body["metadata"]["name"]
        session = (body["metadata"].get("labels") or {}).get("corral.dev/session")
        if session:
            self.sessions[name] = session
        if kind == "DELETED":
            self.deleted.setdefault(name, now)
            self.bodies.pop(name, None)
        else:
            self.added.setdefault(name, now)
            self.bodies[name] = body
            if body["metadata"].get("deletionTimestamp"):
                self.deleting.setdefault(name, now)
            if (body.get("status") or {}).get("phase") == "Running":
                self.running.setdefault(name, now)
        if self.on_event:
            self.on_event(kind, body)


async def _stream(client: KubeClient, path: str, version: str) -> AsyncIterator[JSON]:
    params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "false"}
    forever = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with client._session.get(path, params=params, timeout=forever) as response:
        async for line in response.content:
            if line.strip():
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise ValueError(str(event))
                yield event


async def gather_limited(calls: list[Any], limit: int) -> list[Any]:
    """Run coroutines with at most `limit` in flight (one client, many connections)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with semaphore:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
