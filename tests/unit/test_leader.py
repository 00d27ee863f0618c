"""Lease election with an in-memory API server: at most one replica acts at any moment."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral.controller.leader import LeaderElector
from corral.kube.client import ApiError, Connection, KubeClient


class LeaseServer:
    """One Lease with resourceVersion checks, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0


class FakeClient:
    def __init__(self, server: LeaseServer) -> None:
        self.server = server
        self.hang = False  # a replica cut off from the API server (or frozen)

    async def _wait_if_cut_off(self) -> None:
        if self.hang:
            await asyncio.Event().wait()  # never answers

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        await self._wait_if_cut_off()
        if self.server.lease is None:
            raise ApiError(404, "NotFound", "no lease")
        return {
            "metadata": {"resourceVersion": str(self.server.version)},
            "spec": dict(self.server.lease),
        }

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._wait_if_cut_off()
        if self.server.lease is not None:
            raise ApiError(409, "AlreadyExists", "exists")
        self.server.lease = dict(body["spec"])
        self.server.version += 1
        return body

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        await self._wait_if_cut_off()
        assert self.server.lease is not None
        if patch["metadata"]["resourceVersion"] != str(self.server.version):
            raise ApiError(409, "Conflict", "changed")
        self.server.lease.update(patch["spec"])
        self.server.version += 1
        return {}


class Replicas:
    """Two electors on one Lease, and a log of who leads when."""

    def __init__(self, lease_seconds: float = 1.0, renew_seconds: float = 0.1) -> None:
        self.server = LeaseServer()
        self.clients = {name: FakeClient(self.server) for name in ("a", "b")}
        self.leading: set[str] = set()
        self.most_at_once = 0
        self.log: list[tuple[float, str, str]] = []
        self.electors = {
            name: LeaderElector(
                client,  # type: ignore[arg-type]
                "ns",
                "lease",
                name,
                on_started=lambda name=name: self._started(name),
                on_stopped=lambda name=name: self._stopped(name),
                lease_seconds=lease_seconds,
                renew_seconds=renew_seconds,
            )
            for name, client in self.clients.items()
        }

    def _started(self, name: str) -> None:
        self.leading.add(name)
        self.most_at_once = max(self.most_at_once, len(self.leading))
        self.log.append((time.monotonic(), name, "started"))

    def _stopped(self, name: str) -> None:
        self.leading.discard(name)
        self.log.append((time.monotonic(), name, "stopped"))

    def when(self, name: str, what: str) -> float:
        return next(t for t, n, w in self.log if n == name and w == what)


async def wait_until(check: Any, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (polls a plain predicate)
            await asyncio.sleep(0.01)


async def test_one_leader_and_a_standby() -> None:
    replicas = Replicas()
    first = asyncio.create_task(replicas.electors["a"].run())
    await wait_until(lambda: replicas.leading == {"a"}, 2)
    second = asyncio.create_task(replicas.electors["b"].run())
    await asyncio.sleep(2.5)  # longer than the lease: renewals keep it
    assert replicas.leading == {"a"}
    assert replicas.most_at_once == 1
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_leader_cut_off_stops_acting_before_the_standby_takes_over() -> None:
    """The leader's requests hang (a partition, a stalled API server connection): it must
    stop acting on its own, before the standby's lease clock runs out."""
    replicas = Replicas()
    first = asyncio.create_task(replicas.electors["a"].run())
    await wait_until(lambda: replicas.leading == {"a"}, 2)
    second = asyncio.create_task(replicas.electors["b"].run())
    await asyncio.sleep(0.5)
    cut_off = time.monotonic()
    replicas.clients["a"].hang = True
    await wait_until(lambda: replicas.leading == {"b"}, 5)
    stopped = replicas.when("a", "stopped")
    took_over = replicas.when("b", "started")
    assert stopped < took_over
    assert stopped - cut_off < 1.0  # within the lease
    assert replicas.most_at_once == 1
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_standby_takes_over_a_dead_leaders_lease_after_it_expires() -> None:
    replicas = Replicas()
    first = asyncio.create_task(replicas.electors["a"].run())
    await wait_until(lambda: replicas.leading == {"a"}, 2)
    second = asyncio.create_task(replicas.electors["b"].run())
    await asyncio.sleep(0.3)
    # As good as SIGKILLed: no release, no more renewals.
    replicas.clients["a"].hang = True
    killed = time.monotonic()
    await wait_until(lambda: "b" in replicas.leading, 5)
    takeover = replicas.when("b", "started") - killed
    assert 0.8 <= takeover <= 1.6, takeover  # one lease (1 s), give or take a renew period
    assert replicas.server.lease is not None
    assert replicas.server.lease["holderIdentity"] == "b"
    assert replicas.server.lease["leaseTransitions"] == 1
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_a_released_lease_is_taken_at_once() -> None:
    replicas = Replicas()
    first = asyncio.create_task(replicas.electors["a"].run())
    await wait_until(lambda: replicas.leading == {"a"}, 2)
    second = asyncio.create_task(replicas.electors["b"].run())
    await asyncio.sleep(0.3)
    stopped = time.monotonic()
    first.cancel()  # a clean shutdown releases the lease
    await asyncio.gather(first, return_exceptions=True)
    await wait_until(lambda: "b" in replicas.leading, 2)
    assert replicas.when("b", "started") - stopped < 0.5
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


class FlakyClient(FakeClient):
    """Its first requests fail the way a dropped API connection does."""

    def __init__(self, server: LeaseServer, failures: list[Exception]) -> None:
        super().__init__(server)
        self.failures = failures

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        if self.failures:
            raise self.failures.pop(0)
        return await super().get(kind, namespace, name)


async def test_a_dropped_connection_is_retried_not_fatal() -> None:
    """Fix: aiohttp.ServerDisconnectedError escaped the loop; the process then exited 0."""
    client = FlakyClient(
        LeaseServer(),
        [aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"), OSError("reset")],
    )
    leading: list[bool] = []
    elector = LeaderElector(
        client,  # type: ignore[arg-type]
        "ns",
        "lease",
        "a",
        on_started=lambda: leading.append(True),
        on_stopped=lambda: leading.append(False),
        lease_seconds=1.0,
        renew_seconds=0.05,
    )
    task = asyncio.create_task(elector.run())
    try:
        await wait_until(lambda: leading == [True] or task.done(), 5)
        assert not task.done(), task.exception()
        assert client.failures == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_error_page_that_is_not_json_is_retried() -> None:
    """Fix: a proxy's HTML error page made the client raise a JSONDecodeError that escaped
    the leader loop. Here a real client talks HTTP to a Lease endpoint that first answers
    with HTML, then like the API server."""
    lease: dict[str, Any] = {}
    html_answers = [2]

    async def lease_endpoint(request: web.Request) -> web.Response:
        if html_answers[0]:
            html_answers[0] -= 1
            return web.Response(
                status=503, text="<html>unavailable</html>", content_type="text/html"
            )
        if request.method == "GET":
            if not lease:
                status = {
                    "kind": "Status",
                    "reason": "NotFound",
                    "message": "no lease",
                    "code": 404,
                }
                return web.json_response(status, status=404)
            return web.json_response(lease)
        body = await request.json()
        if request.method == "POST":
            lease.update(body, metadata={**body["metadata"], "resourceVersion": "1"})
            return web.json_response(lease, status=201)
        lease["spec"].update(body["spec"])
        version = int(lease["metadata"]["resourceVersion"]) + 1
        lease["metadata"]["resourceVersion"] = str(version)
        return web.json_response(lease)

    app = web.Application()
    app.router.add_route(
        "*", "/apis/coordination.k8s.io/v1/namespaces/ns/leases{tail:.*}", lease_endpoint
    )
    server = TestServer(app)
    await server.start_server()
    client = KubeClient(Connection(str(server.make_url("")), False, None))
    leading: list[bool] = []
    elector = LeaderElector(
        client,
        "ns",
        "lease",
        "a",
        on_started=lambda: leading.append(True),
        on_stopped=lambda: leading.append(False),
        lease_seconds=1.0,
        renew_seconds=0.05,
    )
    task = asyncio.create_task(elector.run())
    try:
        await wait_until(lambda: leading == [True] or task.done(), 10)
        assert not task.done(), task.exception()
        assert html_answers == [0]
        assert lease["spec"]["holderIdentity"] == "a"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await server.close()


async def test_renewals_that_fail_slowly_step_down_at_the_deadline_not_a_period_later() -> None:
    """Fix: the loop slept a whole renew period after each failed attempt, so renewals that
    each failed just before the period ended stepped down up to a period past the deadline."""
    replicas = Replicas(lease_seconds=1.5, renew_seconds=0.5)  # deadline 1.0 s
    elector = replicas.electors["a"]
    running = asyncio.create_task(elector.run())
    await wait_until(lambda: replicas.leading == {"a"}, 2)
    client = replicas.clients["a"]
    real_get = client.get

    async def slow_failure(*args: Any) -> dict[str, Any]:
        # A renewal sent at 0.5 s fails at 0.99 s: just inside the deadline.
        await asyncio.sleep(0.49)
        raise ApiError(503, "ServiceUnavailable", "busy")

    client.get = slow_failure  # type: ignore[method-assign]
    renewed = elector._last_renewed
    await wait_until(lambda: "a" not in replicas.leading, 3)
    late = replicas.when("a", "stopped") - renewed - elector._renew_deadline()
    # Before the fix: a whole period (0.5 s) late.
    assert late < 0.25, f"stepped down {late:.2f} s after its deadline"
    client.get = real_get  # type: ignore[method-assign]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
