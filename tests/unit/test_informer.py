"""The child informer against a scripted API server: relists, pages, backoff."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from scripted_api import GONE, Recorder, ScriptedApi, run_until

from corral.kube import informer as informer_module
from corral.kube.client import ApiError, Connection, KubeClient
from corral.kube.informer import Informer

JSON = dict[str, Any]
OWNER = {"apiVersion": "corral.dev/v1alpha1", "kind": "AgentSession", "name": "demo"}


def pod(name: str, version: int = 1) -> JSON:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "resourceVersion": str(version),
            "labels": {"app.kubernetes.io/managed-by": "corral"},
            "ownerReferences": [{**OWNER, "uid": "s", "controller": True}],
            "annotations": {"corral.dev/session-spec": "x" * 1000},
        },
        "spec": {"containers": [{"name": "runner"}]},
        "status": {"phase": "Running"},
    }


async def test_a_relist_reports_vanished_objects_with_their_owner() -> None:
    """Fix: a pod deleted while the watch was down came back from the relist as a stub
    without ownerReferences, which the controller cannot attribute to its session."""
    api = ScriptedApi(lists=[[pod("demo-1"), pod("demo-2")], [pod("demo-2")]], watches=[])
    api.watches.append(([], GONE))
    seen = Recorder()
    informer = Informer(api, "Pod", "sel", seen)  # type: ignore[arg-type]
    await run_until(informer, lambda: bool(seen.of("DELETED")))
    (body,) = [b for k, b in seen.events if k == "DELETED"]
    assert body["kind"] == "Pod"
    meta = body["metadata"]
    assert (meta["namespace"], meta["name"], meta["uid"]) == ("team-a", "demo-1", "uid-demo-1")
    assert meta["ownerReferences"] == [{**OWNER, "uid": "s", "controller": True}]
    # What the informer remembers per object is its identity and controller, not its
    # labels, annotations, spec or status.
    assert set(meta) == {"namespace", "name", "uid", "resourceVersion", "ownerReferences"}
    assert "spec" not in body and "status" not in body


async def test_a_relist_after_an_api_error_reports_deletions_too() -> None:
    api = ScriptedApi(lists=[[pod("demo-1")], []], watches=[])
    api.watches.append(([], ApiError(500, "InternalError", "etcd timeout")))
    seen = Recorder()
    informer = Informer(api, "Pod", "sel", seen)  # type: ignore[arg-type]
    informer._pause = lambda seconds: asyncio.sleep(0)  # type: ignore[method-assign]
    await run_until(informer, lambda: bool(seen.of("DELETED")))
    (body,) = [b for k, b in seen.events if k == "DELETED"]
    assert body["metadata"]["ownerReferences"][0]["name"] == "demo"


async def test_watched_deletion_is_forgotten_and_not_reported_twice() -> None:
    deleted = {"type": "DELETED", "object": pod("demo-1", version=5)}
    api = ScriptedApi(lists=[[pod("demo-1")], []], watches=[([deleted], GONE)])
    seen = Recorder()
    informer = Informer(api, "Pod", "sel", seen)  # type: ignore[arg-type]
    await run_until(informer, lambda: len(api.watch_versions) >= 2)
    assert seen.of("DELETED") == ["demo-1"]


async def test_the_list_is_paginated_with_limit_and_continue() -> None:
    """Fix: the initial LIST was one response of every object (with a 30 s total timeout)."""
    api = ScriptedApi(lists=[[pod(f"demo-{i}") for i in range(5)]], watches=[])
    seen = Recorder()
    informer = Informer(api, "Pod", "sel", seen, page_size=2)  # type: ignore[arg-type]
    await run_until(informer, lambda: bool(api.watch_versions))
    assert seen.of("ADDED") == [f"demo-{i}" for i in range(5)]
    assert [c.get("limit") for c in api.list_calls] == ["2", "2", "2"]
    assert [c.get("continue") for c in api.list_calls] == [None, "2", "4"]
    assert informer.synced.is_set()
    assert api.watch_versions == ["100"]


async def test_failures_back_off_exponentially_and_honour_retry_after() -> None:
    """Fix: every error but 410 relisted after a flat second, whatever the server said."""
    api = ScriptedApi(lists=[[pod("demo-1")]], watches=[])
    api.list_errors = [
        ApiError(500, "InternalError", "a"),
        ApiError(500, "InternalError", "b"),
        ApiError(429, "TooManyRequests", "c", retry_after=30.0),
        ApiError(500, "InternalError", "d"),
    ]
    # After the list works, a watch delivers an event (the server is back), then fails.
    event = {"type": "MODIFIED", "object": pod("demo-1", version=101)}
    api.watches.append(([event], ApiError(500, "InternalError", "e")))
    delays: list[float] = []

    async def pause(seconds: float) -> None:
        delays.append(seconds)

    seen = Recorder()
    informer = Informer(api, "Pod", "sel", seen)  # type: ignore[arg-type]
    informer._pause = pause  # type: ignore[method-assign]
    await run_until(informer, lambda: len(delays) >= 5)
    first, second, asked, fourth, after_recovery = delays
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert asked >= 30.0  # Retry-After is a lower bound
    assert 4.0 <= fourth <= 8.0
    assert after_recovery <= 1.0  # a working watch resets the backoff


def test_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    Backoff = informer_module.Backoff
    top = Backoff(rand=lambda: 1.0)
    assert [top.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    bottom = Backoff(rand=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0.5, 1, 2]
    assert bottom.next_delay(retry_after=120) == 120
    assert Backoff(rand=lambda: 1.0).next_delay(retry_after=10**9) <= 600
    top.reset()
    assert top.next_delay() == 1
    assert informer_module.MAX_RETRY_SECONDS == 60


# --- the client's side: what an error response becomes ------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[web.Response]]]:
    answers: list[web.Response] = []

    async def answer(_: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    test_server = TestServer(app)
    await test_server.start_server()
    yield test_server, answers
    await test_server.close()


async def test_retry_after_is_read_from_the_header_and_the_status_body(
    server: tuple[TestServer, list[web.Response]],
) -> None:
    test_server, answers = server
    client = KubeClient(Connection(str(test_server.make_url("")), False, None))
    status = {"kind": "Status", "reason": "TooManyRequests", "message": "slow down"}
    answers.append(web.json_response(status, status=429, headers={"Retry-After": "7"}))
    answers.append(web.json_response({**status, "details": {"retryAfterSeconds": 3}}, status=429))
    try:
        for expected in (7.0, 3.0):
            with pytest.raises(ApiError) as caught:
                await client.request("GET", "/api/v1/pods")
            assert caught.value.status == 429
            assert caught.value.retry_after == expected
    finally:
        await client.close()


async def test_an_error_body_that_is_not_json_is_an_api_error(
    server: tuple[TestServer, list[web.Response]],
) -> None:
    """Fix: a proxy's HTML error page raised a JSONDecodeError that no loop expected."""
    test_server, answers = server
    client = KubeClient(Connection(str(test_server.make_url("")), False, None))
    page = "<html><body>502 Bad Gateway</body></html>"
    answers.append(web.Response(status=502, text=page, content_type="text/html"))
    answers.append(web.Response(status=503, text=page, content_type="text/html"))
    try:
        with pytest.raises(ApiError) as caught:
            await client.request("GET", "/apis/coordination.k8s.io/v1/leases")
        assert caught.value.status == 502
        assert "Bad Gateway" in caught.value.message
        with pytest.raises(ApiError) as streamed:
            async for _ in client.stream("/api/v1/pods", {"watch": "1"}):
                pass
        assert streamed.value.status == 503
    finally:
        await client.close()


async def test_every_list_but_the_first_is_announced() -> None:
    """A relist tells the caller first (the controller then lists its sessions again)."""
    api = ScriptedApi(lists=[[pod("demo-1")], [pod("demo-1")]], watches=[([], GONE)])
    seen = Recorder()
    relists: list[int] = []
    informer = Informer(
        api,  # type: ignore[arg-type]
        "Pod",
        "sel",
        seen,
        on_relist=lambda: relists.append(len(api.list_calls)),
    )
    await run_until(informer, lambda: len(api.watch_versions) >= 2)
    assert relists == [1]  # after the first list, before the second


async def test_a_snapshot_lists_every_page_and_keeps_only_wanted_namespaces() -> None:
    other = {**pod("elsewhere"), "metadata": {**pod("x")["metadata"], "namespace": "team-b"}}
    api = ScriptedApi(lists=[[pod("demo-1"), pod("demo-2"), other]], watches=[])
    informer = Informer(api, "Pod", "sel", Recorder(), ["team-a*"], page_size=1)  # type: ignore[arg-type]
    items, version = await informer.snapshot()
    assert [i["metadata"]["name"] for i in items] == ["demo-1", "demo-2"]
    assert version == 100
    assert len(api.list_calls) == 3


async def test_a_watch_event_larger_than_aiohttps_line_reader_takes_is_read() -> None:
    """Fix: aiohttp's line reader raised LineTooLong (not a ClientError) past 512 KiB, and
    the informer's task, then the operator, ended: a pod whose spec annotation is a prompt
    of `<` and `>` (each escaped to six bytes on the wire) makes such an event."""
    big = pod("big")
    big["metadata"]["annotations"]["corral.dev/session-spec"] = "<" * 200_000
    line = json.dumps({"type": "ADDED", "object": big}).replace("<", "\\u003c") + "\n"
    assert len(line) > 1_000_000

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(line.encode())
        return response

    app = web.Application()
    app.router.add_get("/api/v1/pods", watch)
    test_server = TestServer(app)
    await test_server.start_server()
    client = KubeClient(Connection(str(test_server.make_url("")), False, None))
    try:
        events = [event async for event in client.stream("/api/v1/pods", {"watch": "1"})]
        assert [e["object"]["metadata"]["name"] for e in events] == ["big"]
        annotation = events[0]["object"]["metadata"]["annotations"]["corral.dev/session-spec"]
        assert annotation == "<" * 200_000
    finally:
        await client.close()
        await test_server.close()
