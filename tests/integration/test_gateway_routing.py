"""The gateway against the real API server: TokenReview, SubjectAccessReview on
agentsessions/connect, the session directory fed by real watches, wake on request, and
traffic forwarded to a real runner process (the fake model inside it).

No operator runs for this module's namespace (it is outside the run's operator prefix):
the test plays the operator's part, so that pods can point at a runner on loopback. The
pods use a scheduler that does not exist, so nothing but this test writes their status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from corral.api import runtime
from corral.gateway.auth import Reviewer
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.server import Gateway, GatewaySettings, app_runner
from corral.kube.client import KubeClient, load_connection
from corral.testing.chart_rbac import GATEWAY_TEMPLATES, ChartIdentity, chart_identity
from corral.testing.gateway import (
    GROUP,
    PLURAL,
    VERSION,
    World,
    scratch_namespace,
    start_local_runner,
    watched_directory,
)
from corral.testing.serving import serving
from testrun import RUN_ID

pytestmark = pytest.mark.integration
KEY = b"gateway-test-key-" + b"0" * 32


@pytest.fixture(scope="module")
def gw_namespace(kubeconfig: Path, crd: None, api_client: client.ApiClient) -> Iterator[str]:
    with scratch_namespace(client.CoreV1Api(api_client), f"gw{RUN_ID}") as name:
        yield name


@pytest.fixture(scope="module")
def runner_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A LongRunning runner on loopback with its built-in fake model."""
    runner = start_local_runner(
        tmp_path_factory.mktemp("gw-runner"),
        {"pattern": "LongRunning"},
        {runtime.ENV_GATEWAY_CREDENTIAL: "credential-of-another-session"},
    )
    yield runner.port
    runner.stop()


@pytest.fixture(scope="module")
def world(api_client: client.ApiClient, gw_namespace: str, runner_process: int) -> World:
    return World(api_client, gw_namespace, runner_process)


@pytest.fixture(scope="module")
def users(world: World) -> dict[str, str]:
    return {
        "alice": world.user(
            "alice", ["chat", "sleepy", "many", "done", "paused"], ["create", "get"]
        ),
        "viewer": world.user("viewer", ["chat"], ["get"]),
        "anyone": world.user("anyone", None, ["create", "get"]),
    }


@pytest.fixture(scope="module")
def gateway_identity(
    kubeconfig: Path, gw_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartIdentity]:
    """The gateway's ServiceAccount with exactly the chart's RBAC for it."""
    identity = chart_identity(
        kubeconfig,
        gw_namespace,
        f"gw-{RUN_ID}",
        tmp_path_factory.mktemp("gateway-identity"),
        templates=GATEWAY_TEMPLATES,
    )
    yield identity
    identity.delete()


@pytest.fixture
async def gateway(
    gateway_identity: ChartIdentity, world: World, users: dict[str, str]
) -> AsyncIterator[tuple[str, Gateway]]:
    kube = KubeClient(load_connection(str(gateway_identity.kubeconfig)))
    metrics = GatewayMetrics()
    async with watched_directory(kube, world.namespace) as directory:
        server = Gateway(
            Reviewer(kube, metrics), directory, KEY, metrics, GatewaySettings(hold_seconds=20)
        )
        async with serving(app_runner(server.app(), idle_seconds=60)) as url:
            yield url, server
    await kube.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _until(predicate: Any, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _phase(server: Gateway, namespace: str, name: str) -> str | None:
    view = server.directory.sessions.get((namespace, name))
    return view.phase if view else None


def _serving(server: Gateway, namespace: str, name: str) -> bool:
    view = server.directory.sessions.get((namespace, name))
    return view is not None and view.ready_endpoint() is not None


async def _sse(response: aiohttp.ClientResponse) -> tuple[list[dict[str, Any]], list[str]]:
    events, comments = [], []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
        elif line.startswith(":"):
            comments.append(line)
    return events, comments


async def test_only_authorized_users_reach_a_session(
    gateway: tuple[str, Gateway], world: World, users: dict[str, str]
) -> None:
    url, server = gateway
    uid = world.create_session("chat")
    world.set_status("chat", {"phase": "Running"})
    world.create_ready_pod("chat", uid)
    world.create_session("other")
    await _until(lambda: _serving(server, world.namespace, "chat"))
    base = f"{url}/sessions/{world.namespace}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/chat/v1/status") as r:
            assert r.status == 401 and "token" in (await r.json())["error"]
        async with http.get(f"{base}/chat/v1/status", headers=_auth("not-a-token")) as r:
            assert r.status == 401
        async with http.get(f"{base}/chat/v1/status", headers=_auth(users["alice"])) as r:
            body = await r.json()
            assert r.status == 200 and body["state"] in ("idle", "busy"), body
        async with http.get(f"{base}/other/v1/status", headers=_auth(users["alice"])) as r:
            error = (await r.json())["error"]
            assert r.status == 403 and "agentsessions/connect" in error and "'get'" in error
        async with http.post(
            f"{base}/chat/v1/messages", json={"text": "hi"}, headers=_auth(users["viewer"])
        ) as r:
            assert r.status == 403 and "'create'" in (await r.json())["error"]
        async with http.get(f"{base}/nosuch/v1/status", headers=_auth(users["anyone"])) as r:
            assert r.status == 404
        # Through the API server's service proxy the token travels in X-Corral-Token.
        async with http.get(
            f"{base}/chat/v1/status", headers={"X-Corral-Token": users["viewer"]}
        ) as r:
            assert r.status == 200


async def _chat_serving(server: Gateway, world: World) -> None:
    """Session `chat`, Running with a ready pod (made by the first test that needs it)."""
    if (world.namespace, "chat") not in server.directory.sessions:
        uid = world.create_session("chat")
        world.set_status("chat", {"phase": "Running"})
        world.create_ready_pod("chat", uid)
    await _until(lambda: _serving(server, world.namespace, "chat"))


async def test_messages_stream_through_sse_and_websocket(
    gateway: tuple[str, Gateway], world: World, users: dict[str, str]
) -> None:
    url, server = gateway
    await _chat_serving(server, world)
    base = f"{url}/sessions/{world.namespace}/chat"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/messages", json={"text": "hello"}, headers=_auth(users["alice"])
        ) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            events, _ = await _sse(r)
        assert events[-1]["type"] == "result" and events[-1]["subtype"] == "success", events
        async with http.ws_connect(f"{base}/v1/stream", headers=_auth(users["alice"])) as ws:
            await ws.send_json({"type": "message", "text": "over the socket"})
            seen = []
            async for msg in ws:
                event = json.loads(msg.data)
                seen.append(event)
                if event["type"] == "result":
                    break
        assert seen[-1]["subtype"] == "success", seen
        async with http.get(f"{base}/v1/transcript", headers=_auth(users["viewer"])) as r:
            text = json.dumps(await r.json())
            assert r.status == 200 and "hello" in text and "over the socket" in text


async def test_requests_to_a_sleeping_session_cause_one_wake_and_are_held(
    gateway: tuple[str, Gateway], world: World, users: dict[str, str]
) -> None:
    url, server = gateway
    uid = world.create_session("many", "Hybrid")
    world.set_status("many", {"phase": "Idle"})
    await _until(lambda: _phase(server, world.namespace, "many") == "Idle")
    base = f"{url}/sessions/{world.namespace}/many"

    async def play_operator() -> str:
        # What the operator does on a wake annotation: a pod, then Running.
        while True:
            body = world.custom.get_namespaced_custom_object(
                GROUP, VERSION, world.namespace, PLURAL, "many"
            )
            value = (body["metadata"].get("annotations") or {}).get(runtime.WAKE_ANNOTATION)
            if value:
                await asyncio.sleep(1.0)  # the wake takes a moment: requests must be held
                world.create_ready_pod("many", uid)
                world.set_status("many", {"phase": "Running"})
                return str(value)
            await asyncio.sleep(0.1)

    async def one(
        http: aiohttp.ClientSession, i: int
    ) -> tuple[int, list[dict[str, Any]], list[str]]:
        async with http.post(
            f"{base}/v1/messages",
            json={"text": f"wake {i}", "stream": i > 0},
            headers=_auth(users["alice"]),
        ) as r:
            if i == 0:
                return r.status, [await r.json()], []
            events, comments = await _sse(r)
            return r.status, events, comments

    async with aiohttp.ClientSession() as http:
        operator = asyncio.create_task(play_operator())
        results = await asyncio.gather(*(one(http, i) for i in range(10)))
        wake_value = await operator
    assert "for system:serviceaccount:" in wake_value and ":alice" in wake_value
    assert server.metrics.wakes._value.get() == 1
    # Every held request reached the runner once it was ready: one (or, if turns are quick,
    # a few) took the agent, the others got the runner's own 409 busy answer.
    status0 = results[0][0]
    outcomes = ["result" if status0 == 200 else f"error {status0}"]
    for status, events, comments in results[1:]:
        assert status == 200 and ": waking" in comments, (status, comments)
        last = events[-1]
        outcomes.append("result" if last["type"] == "result" else f"error {last.get('status')}")
    assert outcomes.count("result") >= 1, outcomes
    assert set(outcomes) <= {"result", "error 409"}, outcomes
    events = world.core.list_namespaced_event(
        world.namespace, field_selector="involvedObject.name=many,reason=WokenByRequest"
    ).items
    assert len(events) == 1 and "alice" in events[0].message


async def test_finished_suspended_and_never_waking_sessions(
    gateway: tuple[str, Gateway], world: World, users: dict[str, str]
) -> None:
    url, server = gateway
    server.settings.hold_seconds = 1.5
    world.create_session("done", "Ephemeral", prompt="x")
    result = {"subtype": "success", "text": "42"}
    world.set_status("done", {"phase": "Succeeded", "result": result})
    world.create_session("paused", "Hybrid", suspend=True)
    world.set_status("paused", {"phase": "Suspended"})
    world.create_session("sleepy", "Hybrid")
    world.set_status("sleepy", {"phase": "Idle"})
    await _until(lambda: _phase(server, world.namespace, "done") == "Succeeded")
    await _until(lambda: _phase(server, world.namespace, "paused") == "Suspended")
    await _until(lambda: _phase(server, world.namespace, "sleepy") == "Idle")
    base = f"{url}/sessions/{world.namespace}"
    alice = _auth(users["alice"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/done/v1/status", headers=alice) as r:
            body = await r.json()
            assert r.status == 410 and body["result"]["text"] == "42"
        async with http.get(f"{base}/paused/v1/status", headers=alice) as r:
            assert r.status == 409 and "suspend" in (await r.json())["error"]
        async with http.get(f"{base}/sleepy/v1/status", headers=alice) as r:
            assert r.status == 503 and int(r.headers["Retry-After"]) > 0


async def test_idle_and_dribbling_connections_are_closed_but_open_streams_are_not(
    gateway: tuple[str, Gateway], world: World, users: dict[str, str]
) -> None:
    _, server = gateway
    await _chat_serving(server, world)
    async with serving(app_runner(server.app(), idle_seconds=1.0)) as base:
        # A request head that never ends holds its socket for the idle time, not an hour.
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /sessions/a/b/v1/status HTTP/1.1\r\nHost: gateway\r\n")
        await writer.drain()
        started = time.monotonic()
        await asyncio.wait_for(reader.read(), 10)  # returns at the gateway's close
        assert time.monotonic() - started < 5
        writer.close()
        # A WebSocket silent for longer than that is a request in progress: it stays open.
        url = f"{base}/sessions/{world.namespace}/chat/v1/stream"
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, headers=_auth(users["alice"])) as ws,
        ):
            await asyncio.sleep(2.5)
            await ws.send_json({"type": "message", "text": "after a silence"})
            seen = []
            async for msg in ws:
                seen.append(json.loads(msg.data))
                if seen[-1]["type"] == "result":
                    break
        assert seen and seen[-1]["subtype"] == "success", seen
