"""Pure parts of the gateway: routes, limits, credentials, the session directory, caches."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from corral.api import runtime
from corral.api.tokens import RUNNER_INGRESS, hmac_token, runner_credential
from corral.gateway import routes
from corral.gateway.auth import ReviewCache, User
from corral.gateway.directory import (
    PROBE_INTERVAL_SECONDS,
    Directory,
    NotReady,
    SessionFinished,
    SessionSuspended,
    wake_value,
)
from corral.gateway.limits import Limited, UserLimits
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.proxy import connect_retrying, runner_ready
from corral.gateway.server import bearer_token, wants_stream
from corral.testing.gateway import free_port
from corral.testing.serving import route, serving

# --- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "verb", "runner_path"),
    [
        ("GET", "/sessions/demo/chat/v1/status", "get", "/v1/status"),
        ("GET", "/sessions/demo/chat/v1/transcript", "get", "/v1/transcript"),
        ("POST", "/sessions/demo/chat/v1/messages", "create", "/v1/messages"),
        ("POST", "/sessions/demo/chat/v1/interrupt", "create", "/v1/interrupt"),
        ("POST", "/sessions/demo/a.b-c/v1/conversation", "create", "/v1/conversation"),
        ("GET", "/sessions/demo/chat/v1/stream", "create", "/v1/stream"),
    ],
)
def test_routes_map_every_runner_endpoint_to_its_verb(
    method: str, path: str, verb: str, runner_path: str
) -> None:
    route = routes.parse(method, path)
    assert (route.namespace, route.endpoint.verb, route.runner_path) == (
        "demo",
        verb,
        runner_path,
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/other", 404),
        ("GET", "/sessions/demo", 400),
        ("GET", "/sessions/demo/chat/", 400),
        ("GET", "/sessions/Demo/chat/v1/status", 400),
        ("GET", "/sessions/demo/-chat/v1/status", 400),
        ("GET", "/sessions/" + "n" * 64 + "/chat/v1/status", 400),
        ("GET", "/sessions/demo/chat/readyz", 404),
        ("GET", "/sessions/demo/chat/v1/messages", 405),
        ("DELETE", "/sessions/demo/chat/v1/status", 405),
    ],
)
def test_routes_refuse_malformed_and_unknown_paths(method: str, path: str, status: int) -> None:
    with pytest.raises(routes.RouteError) as caught:
        routes.parse(method, path)
    assert caught.value.status == status


def test_bearer_token_prefers_the_service_proxy_header() -> None:
    assert bearer_token({"Authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"Authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "Basic abc"}) is None
    assert bearer_token({"X-Corral-Token": "Bearer xyz", "Authorization": "Bearer abc"}) == "xyz"
    assert bearer_token({}) is None


def test_wants_stream_follows_the_runner() -> None:
    messages = routes.parse("POST", "/sessions/d/s/v1/messages")
    assert wants_stream(messages, b'{"text": "hi"}')
    assert not wants_stream(messages, b'{"text": "hi", "stream": false}')
    assert not wants_stream(messages, b"not json")
    assert wants_stream(routes.parse("POST", "/sessions/d/s/v1/conversation"), b"{}")
    assert not wants_stream(routes.parse("POST", "/sessions/d/s/v1/interrupt"), b"{}")


# --- limits ------------------------------------------------------------------------------


def test_rate_limit_refills_over_time_and_names_retry_after() -> None:
    now = [0.0]
    limits = UserLimits(rate_per_second=2, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limits.take("alice")
    with pytest.raises(Limited) as caught:
        limits.take("alice")
    assert caught.value.limit == "rate" and caught.value.retry_after >= 1
    limits.take("bob")  # users do not share a bucket
    now[0] = 0.5
    limits.take("alice")  # one token back after half a second at 2/s


def test_stream_limit_counts_open_streams_per_user() -> None:
    limits = UserLimits(max_streams=2)
    limits.open_stream("alice")
    limits.open_stream("alice")
    with pytest.raises(Limited):
        limits.open_stream("alice")
    limits.close_stream("alice")
    limits.open_stream("alice")


def test_user_table_is_bounded() -> None:
    limits = UserLimits(max_users=10)
    for i in range(100):
        limits.take(f"user-{i}")
    assert len(limits._buckets) == 10


# --- credentials -------------------------------------------------------------------------


def test_runner_credentials_are_bound_to_session_uid_key_and_purpose() -> None:
    key = b"k" * 32
    base = runner_credential(key, "ns", "a", "uid-1")
    assert (
        base
        == runner_credential(key, "ns", "a", "uid-1")
        == hmac_token(key, RUNNER_INGRESS, "ns", "a", "uid-1")
    )
    others = {
        hmac_token(key, b"corral.dev/activity-token/v1", "ns", "a", "uid-1"),
        runner_credential(key, "ns", "b", "uid-1"),
        runner_credential(key, "ns2", "a", "uid-1"),
        runner_credential(key, "ns", "a", "uid-2"),
        runner_credential(b"x" * 32, "ns", "a", "uid-1"),
        # NUL separation: moving a character between parts changes the token
        runner_credential(key, "n", "sa", "uid-1"),
    }
    assert base not in others and len(others) == 6


def test_wake_value_is_bounded() -> None:
    assert len(wake_value("u" * 5000)) <= 200
    assert wake_value("alice").startswith("gateway ")


# --- directory ---------------------------------------------------------------------------


def _session(phase: str = "Running", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "s", "uid": "uid-1"},
        "spec": {"pattern": "Hybrid", **spec},
        "status": {"phase": phase},
    }


def _pod(
    name: str,
    *,
    owner: str = "uid-1",
    ready: bool = True,
    deleting: bool = False,
    created: str = "2026-01-01T00:00:00Z",
    ip: str = "10.0.0.5",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": "ns",
        "name": name,
        "uid": f"pod-{name}",
        "creationTimestamp": created,
        "ownerReferences": [{"uid": owner, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {
        "metadata": meta,
        "spec": {
            "containers": [{"name": "runner", "ports": [{"name": "http", "containerPort": 9000}]}]
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_directory_routes_only_to_the_sessions_current_ready_pod() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_pod("ADDED", _pod("early"))  # before its session: parked, then adopted
    directory.on_session("ADDED", _session())
    view = directory.view("ns", "s")
    endpoint = view.ready_endpoint()
    assert endpoint is not None and endpoint.pod_name == "early" and endpoint.port == 9000
    directory.on_pod("MODIFIED", _pod("early", deleting=True))
    directory.on_pod("ADDED", _pod("stranger", owner="uid-other"))
    directory.on_pod("ADDED", _pod("next", ready=False, created="2026-01-01T00:02:00Z"))
    assert view.ready_endpoint() is None  # terminating, foreign and unready pods never serve
    directory.on_pod("MODIFIED", _pod("next", created="2026-01-01T00:02:00Z", ip="10.0.0.6"))
    endpoint = view.ready_endpoint()
    assert endpoint is not None and endpoint.base_url == "http://10.0.0.6:9000"


def test_directory_forgets_pods_of_a_replaced_session() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session())
    directory.on_pod("ADDED", _pod("p"))
    replaced = _session()
    replaced["metadata"]["uid"] = "uid-2"
    directory.on_session("MODIFIED", replaced)
    assert directory.view("ns", "s").ready_endpoint() is None


def test_directory_says_why_a_session_cannot_serve() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    finished = _session("Succeeded", pattern="Ephemeral")
    finished["status"]["result"] = {"subtype": "success", "text": "42"}
    directory.on_session("ADDED", finished)
    with pytest.raises(SessionFinished) as caught:
        directory.check_reachable(directory.view("ns", "s"))
    assert caught.value.result == {"subtype": "success", "text": "42"}
    directory.on_session("MODIFIED", _session("Suspended", suspend=True))
    with pytest.raises(SessionSuspended):
        directory.check_reachable(directory.view("ns", "s"))


async def test_held_request_resumes_when_the_pod_becomes_ready() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    waiting = asyncio.create_task(directory.ready_endpoint("ns", "s", hold_seconds=30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    directory.on_pod("ADDED", _pod("woken"))
    endpoint = await asyncio.wait_for(waiting, 5)
    assert endpoint.pod_name == "woken"


def test_starting_endpoint_is_the_newest_running_unready_pod_of_the_session() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Running"))
    view = directory.view("ns", "s")
    assert view.starting_endpoint() is None
    directory.on_pod("ADDED", _pod("stranger", owner="uid-other", ready=False))
    directory.on_pod("ADDED", _pod("old", ready=False, deleting=True, ip="10.0.0.4"))
    assert view.starting_endpoint() is None  # foreign and terminating pods are never probed
    pending = _pod("new", ready=False, created="2026-01-01T00:02:00Z", ip="")
    pending["status"]["phase"] = "Pending"
    directory.on_pod("ADDED", pending)
    assert view.starting_endpoint() is None  # no address yet
    directory.on_pod("MODIFIED", _pod("new", ready=False, created="2026-01-01T00:02:00Z"))
    starting = view.starting_endpoint()
    assert starting is not None and starting.pod_name == "new"
    directory.on_pod("MODIFIED", _pod("new", created="2026-01-01T00:02:00Z"))
    assert view.starting_endpoint() is None  # Ready: ready_endpoint serves it


async def test_held_request_takes_a_runner_that_answers_ready_before_the_kubelet_says_so() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    runner_ready = asyncio.Event()
    probed: list[str] = []

    async def probe(endpoint: Any) -> bool:
        probed.append(endpoint.pod_name)
        return runner_ready.is_set()

    waiting = asyncio.create_task(directory.ready_endpoint("ns", "s", hold_seconds=30, probe=probe))
    directory.on_pod("ADDED", _pod("woken", ready=False))
    await asyncio.sleep(0.35)
    assert not waiting.done() and probed  # asked, and not ready yet: still held
    runner_ready.set()  # the pod's Ready condition never changes in this test
    endpoint = await asyncio.wait_for(waiting, 5)
    assert endpoint.pod_name == "woken" and set(probed) == {"woken"}


async def test_the_probe_of_a_starting_runner_is_answered_the_moment_it_is_ready() -> None:
    """The gateway's probe asks the runner to hold its answer while it starts (as the
    kubelet's first probe does), so a runner that turns ready is taken at once, by one
    request, instead of at the next of repeated asks."""
    started = asyncio.Event()
    probed = asyncio.Event()
    asked: list[str | None] = []

    async def readyz(request: web.Request) -> web.Response:  # the runner's contract
        asked.append(request.query.get("wait"))
        probed.set()
        hold = float(request.query.get("wait") or 0)
        if hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), hold)
        return web.json_response({}, status=200 if started.is_set() else 503)

    async with (
        serving(route(readyz, runtime.READINESS_PATH)) as url,
        aiohttp.ClientSession() as client,
    ):
        probing = asyncio.create_task(runner_ready(client, url))
        await asyncio.wait_for(probed.wait(), 5)
        started.set()  # the runner's agents are up while its probe is held
        assert await asyncio.wait_for(probing, 5) is True
    assert len(asked) == 1 and asked[0] is not None and float(asked[0]) > 0, asked


async def test_held_requests_share_one_probe_of_a_starting_runner() -> None:
    """Ten held requests must not ask a runner that starts at 250m CPU ten times as often."""
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    directory.on_pod("ADDED", _pod("woken", ready=False))
    probes = 0

    async def probe(endpoint: Any) -> bool:
        nonlocal probes
        probes += 1
        await asyncio.sleep(0.01)
        return False

    waiting = [
        asyncio.create_task(directory.ready_endpoint("ns", "s", hold_seconds=0.5, probe=probe))
        for _ in range(10)
    ]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, NotReady) for r in results)
    # About one probe per PROBE_INTERVAL_SECONDS over the 0.5 s hold, not one per request.
    assert 1 <= probes <= 0.5 / PROBE_INTERVAL_SECONDS + 3, probes


async def test_a_probe_that_hangs_does_not_hold_up_a_pod_the_kubelet_says_is_ready() -> None:
    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    directory.on_pod("ADDED", _pod("woken", ready=False))

    async def probe(endpoint: Any) -> bool:
        await asyncio.sleep(30)  # an address nobody answers on
        return False

    waiting = asyncio.create_task(directory.ready_endpoint("ns", "s", hold_seconds=30, probe=probe))
    await asyncio.sleep(0.2)
    directory.on_pod("MODIFIED", _pod("woken"))
    endpoint = await asyncio.wait_for(waiting, 1)
    assert endpoint.pod_name == "woken"
    for _, _, task in directory._probes.values():
        task.cancel()


async def test_many_concurrent_wakes_patch_once() -> None:
    patches: list[dict[str, Any]] = []

    class Kube:
        async def patch(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> None:
            await asyncio.sleep(0.05)
            patches.append(body)

        async def create(self, manifest: dict[str, Any]) -> None:
            pass

    directory = Directory(kube=Kube())  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    view = directory.view("ns", "s")
    started = await asyncio.gather(
        *(directory.wake(view, "alice") for _ in range(10) if directory.needs_wake(view))
    )
    assert len(patches) == 1 and started.count(True) == 1
    annotations = patches[0]["metadata"]["annotations"]
    assert annotations[runtime.WAKE_ANNOTATION].endswith("for alice")
    assert not directory.needs_wake(view)  # asked recently: later requests just wait


# --- caches ------------------------------------------------------------------------------


async def test_review_cache_loads_once_for_concurrent_misses() -> None:
    metrics = GatewayMetrics()
    cache: ReviewCache[str, User | None] = ReviewCache("token", 10, 60, metrics)
    calls = 0

    async def load() -> User | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return User("alice")

    users = await asyncio.gather(*(cache.get("k", load) for _ in range(20)))
    assert calls == 1 and {u.name for u in users if u} == {"alice"}
    await cache.get("k", load)
    assert calls == 1
    assert metrics.auth_cache.labels(kind="token", result="miss")._value.get() == 1


# --- the runner accepts only the gateway -------------------------------------------------


def _runner_api(credential: str | None) -> Any:
    from corral.runner.http_api import RunnerApi

    return RunnerApi(session=None, metrics=None, gateway_credential=credential)  # type: ignore[arg-type]


async def _call(api: Any, path: str, headers: dict[str, str], peer: str) -> int:
    from unittest import mock

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", path, headers=headers, transport=transport)

    async def handler(_: Any) -> Any:
        from aiohttp import web

        return web.json_response({"ok": True})

    response = await api._errors(request, lambda r: api._callers(r, handler))
    return int(response.status)


async def test_runner_refuses_callers_without_the_gateway_credential() -> None:
    api = _runner_api("secret-credential")
    header = {runtime.GATEWAY_CREDENTIAL_HEADER: "secret-credential"}
    assert await _call(api, "/v1/status", {}, "10.1.2.3") == 401
    assert (
        await _call(api, "/v1/status", {runtime.GATEWAY_CREDENTIAL_HEADER: "x"}, "10.1.2.3") == 401
    )
    assert await _call(api, "/v1/status", header, "10.1.2.3") == 200
    assert await _call(api, "/readyz", {}, "10.1.2.3") == 200  # the kubelet's probe
    assert await _call(api, "/v1/status", {}, "127.0.0.1") == 200  # the pod's own agents
    assert await _call(api, "/v1/status", {}, "::ffff:127.0.0.1") == 200
    # A mesh sidecar forwards outside callers from elsewhere in 127/8: not the pod's own.
    assert await _call(api, "/v1/status", {}, "127.0.0.6") == 401
    assert await _call(_runner_api(None), "/v1/status", {}, "10.1.2.3") == 200


# --- what the operator renders for the gateway ---------------------------------------------


def _gateway_config(**extra: Any) -> Any:
    from corral.config import OperatorConfig

    config = OperatorConfig.model_validate(
        {
            "namespace": "corral-system",
            "gateway": {
                "namespace": "corral-system",
                "podLabels": {"app.kubernetes.io/component": "gateway"},
            },
            **extra,
        }
    )
    return config.with_activity_keys((b"s" * 32,))


def test_with_a_gateway_only_its_pods_reach_the_runner(make_session: Any) -> None:
    from corral.render.network_policy import render_network_policy

    session = make_session("LongRunning", network={"ingressFromNamespaces": ["team-b"]})
    ingress = render_network_policy(session, _gateway_config())["spec"]["ingress"]
    peers = [peer for rule in ingress for peer in rule["from"]]
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
    ]
    assert sorted(namespaces) == ["corral-system", "team-b"]
    [gateway] = [p for p in peers if "podSelector" in p]
    assert gateway["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "gateway"}
    # The operator's namespace as a whole no longer reaches runners.
    assert all("podSelector" in p for p in peers if namespaces[peers.index(p)] == "corral-system")


def test_without_a_gateway_the_operator_namespace_still_reaches_the_runner(
    make_session: Any, config: Any
) -> None:
    from corral.render.network_policy import render_network_policy

    ingress = render_network_policy(make_session(), config)["spec"]["ingress"]
    [rule] = ingress
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "corral-system"}}}
    ]


def test_the_pod_gets_its_own_sessions_gateway_credential(make_session: Any) -> None:
    from corral.render.pod import render_pod

    session = make_session("Hybrid")
    config = _gateway_config()
    env = {
        e["name"]: e.get("value")
        for e in render_pod(session, config, 1)["spec"]["containers"][0]["env"]
    }
    meta = session.metadata
    assert env[runtime.ENV_GATEWAY_CREDENTIAL] == runner_credential(
        b"s" * 32, meta.namespace, meta.name, meta.uid
    )
    without = render_pod(session, config.model_copy(update={"gateway": None}), 1)
    names = {e["name"] for e in without["spec"]["containers"][0]["env"]}
    assert runtime.ENV_GATEWAY_CREDENTIAL not in names


class AliceReviewer:
    """Every token is alice's, and alice may do anything; counts the access reviews."""

    def __init__(self) -> None:
        self.access_reviews = 0

    async def authenticate(self, token: str | None) -> User:
        return User("alice")

    async def authorize(self, user: User, verb: str, namespace: str, name: str) -> None:
        self.access_reviews += 1


def open_transport() -> Any:
    """A mocked request's transport, still connected."""
    from unittest import mock

    transport = mock.Mock()
    transport.is_closing.return_value = False
    return transport


async def test_one_json_log_line_per_request_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json as json_module
    import logging

    from corral.gateway.auth import Unauthenticated
    from corral.gateway.server import Gateway
    from corral.logs import OperatorJsonFormatter

    class Reviewer:
        async def authenticate(self, token: str | None) -> User:
            if token != "alice-token":
                raise Unauthenticated("no")
            return User("alice")

        async def authorize(self, user: User, verb: str, namespace: str, name: str) -> None:
            pass

    directory = Directory(kube=None)  # type: ignore[arg-type]
    gateway = Gateway(Reviewer(), directory, b"k" * 32, GatewayMetrics())  # type: ignore[arg-type]
    request = make_mocked_request(
        "GET",
        "/sessions/ns/nosuch/v1/status",
        headers={"Authorization": "Bearer alice-token"},
        transport=open_transport(),
    )
    with caplog.at_level(logging.INFO, logger="corral.gateway"):
        response = await gateway.handle(request)
    assert response.status == 404
    [record] = [r for r in caplog.records if r.getMessage() == "request"]
    line = json_module.loads(OperatorJsonFormatter().format(record))
    assert line["session"] == "nosuch" and line["namespace"] == "ns"
    assert (line["user"], line["route"], line["status"]) == ("alice", "/v1/status", 404)
    assert "alice-token" not in json_module.dumps(line)


async def test_a_session_that_sleeps_again_soon_after_a_wake_is_woken_again() -> None:
    """The "asked recently" guard lasts only until the session leaves Idle: a session woken,
    served and asleep again within 30 s must be woken by the next request, not held to 503."""

    class Kube:
        async def patch(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> None:
            pass

        async def create(self, manifest: dict[str, Any]) -> None:
            pass

    directory = Directory(kube=Kube())  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    assert directory.needs_wake(directory.view("ns", "s"))
    assert await directory.wake(directory.view("ns", "s"), "alice")
    directory.on_session("MODIFIED", _session("Idle"))  # the operator has not moved yet
    assert not directory.needs_wake(directory.view("ns", "s"))
    directory.on_session("MODIFIED", _session("Running"))
    directory.on_session("MODIFIED", _session("Idle"))  # asleep again, seconds later
    assert directory.needs_wake(directory.view("ns", "s"))


# --- connecting to a runner that has just turned Ready ---------------------------------


async def test_a_refused_connection_is_tried_again_until_the_runner_listens() -> None:
    port = free_port()
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/v1/messages", answer)
    runner = web.AppRunner(app)
    await runner.setup()

    async def listen_late() -> None:
        await asyncio.sleep(0.4)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    late = asyncio.create_task(listen_late())
    try:
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{port}/v1/messages"
            # Refused at first (nothing listens yet), then answered: a POST, tried again.
            response = await connect_retrying(lambda: client.post(url, json={}), 5.0)
            assert response.status == 200 and await response.json() == {"ok": True}
            response.release()
    finally:
        await late
        await runner.cleanup()


async def test_a_runner_that_never_listens_is_given_up_on_after_the_bound() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/messages"
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as client:
        started = loop.time()
        with pytest.raises(aiohttp.ClientConnectorError):
            await connect_retrying(lambda: client.post(url, json={}), 0.3)
        waited = loop.time() - started
        with pytest.raises(aiohttp.ClientConnectorError):
            await connect_retrying(lambda: client.post(url, json={}), 0.0)
    # It tried for about the bound, not once and not for ever (a loose upper bound: this
    # checks the bound is applied, not the machine's speed).
    assert 0.1 <= waited < 3.0, waited


# --- what the gateway review found ----------------------------------------------------------


async def test_a_wake_the_api_server_refused_is_asked_again_by_the_next_request() -> None:
    from corral.gateway.directory import WakeFailed
    from corral.kube.client import ApiError

    class Kube:
        def __init__(self) -> None:
            self.patches = 0

        async def patch(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> None:
            self.patches += 1
            if self.patches == 1:
                raise ApiError(503, "ServiceUnavailable", "the API server is busy")

        async def create(self, manifest: dict[str, Any]) -> None:
            pass

    kube = Kube()
    directory = Directory(kube=kube)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    with pytest.raises(WakeFailed, match="retry shortly"):
        await directory.wake(directory.view("ns", "s"), "alice")
    assert directory.needs_wake(directory.view("ns", "s"))  # not held for 30 s to no avail
    assert await directory.wake(directory.view("ns", "s"), "alice")
    assert kube.patches == 2


async def test_a_cancelled_review_does_not_fail_the_others_waiting_on_it() -> None:
    cache: ReviewCache[str, str] = ReviewCache("token", 10, 60, GatewayMetrics())
    loads = []

    async def load() -> str:
        loads.append(1)
        await asyncio.sleep(0.2)
        return "alice"

    first = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0.05)
    first.cancel()  # its client went away
    assert await second == "alice"  # loaded again rather than cancelled with it
    assert len(loads) == 2


async def test_refused_tokens_neither_crowd_the_cache_nor_review_without_limit() -> None:
    from corral.gateway.auth import NEW_TOKENS_BURST, Reviewer, Unauthenticated

    class Kube:
        def __init__(self) -> None:
            self.reviews = 0

        async def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
            self.reviews += 1
            token = body["spec"]["token"]
            ok = token == "good"
            return {"status": {"authenticated": ok, "user": {"username": "alice"} if ok else {}}}

    kube = Kube()
    reviewer = Reviewer(kube, GatewayMetrics(), cache_size=5)  # type: ignore[arg-type]
    assert (await reviewer.authenticate("good")).name == "alice"
    refused = limited = 0
    for i in range(NEW_TOKENS_BURST + 20):
        try:
            await reviewer.authenticate(f"made-up-{i}")
        except Unauthenticated:
            refused += 1
        except Limited as error:
            assert error.limit == "token-reviews"
            limited += 1
    assert kube.reviews <= NEW_TOKENS_BURST + 2 and limited >= 18
    with pytest.raises(Unauthenticated):
        await reviewer.authenticate("made-up-0")  # remembered: no second review
    before = kube.reviews
    assert (await reviewer.authenticate("good")).name == "alice"  # still cached
    assert kube.reviews == before


async def test_a_user_over_its_rate_causes_no_access_reviews() -> None:
    from corral.gateway.server import Gateway, GatewaySettings

    reviewer = AliceReviewer()
    settings = GatewaySettings(rate_per_second=0.001, burst=2)
    directory = Directory(kube=None)  # type: ignore[arg-type]
    gateway = Gateway(reviewer, directory, b"k" * 32, GatewayMetrics(), settings)  # type: ignore[arg-type]
    statuses = []
    for i in range(50):
        request = make_mocked_request(
            "GET", f"/sessions/ns/s{i}/v1/status", transport=open_transport()
        )
        statuses.append((await gateway.handle(request)).status)
    assert statuses.count(429) == 48 and reviewer.access_reviews == 2


async def test_a_held_request_whose_client_left_is_not_forwarded() -> None:
    from unittest import mock

    from corral.gateway.server import CLIENT_GONE, Gateway

    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Running"))
    gateway = Gateway(AliceReviewer(), directory, b"k" * 32, GatewayMetrics())  # type: ignore[arg-type]
    transport = open_transport()

    async def woken(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        transport.is_closing.return_value = True  # the client gave up while it was held
        return "http://127.0.0.1:1/v1/messages", directory.view("ns", "s")

    request = make_mocked_request("POST", "/sessions/ns/s/v1/messages", transport=transport)
    with (
        mock.patch.object(gateway, "_endpoint_url", woken),
        mock.patch("corral.gateway.server.forward_http") as forward,
        mock.patch.object(gateway, "_read_body", mock.AsyncMock(return_value=b"{}")),
    ):
        response = await gateway.handle(request)
    assert response.status == CLIENT_GONE
    forward.assert_not_called()


@pytest.mark.parametrize(
    ("size", "limit", "code"),
    [(300_000, 16 * 1024 * 1024, 4001), (300_000, 1000, 1009)],
    ids=["passed-on", "over-the-limit"],
)
async def test_a_runners_frames_and_close_code_reach_the_client(
    size: int, limit: int, code: int
) -> None:
    from corral.gateway.proxy import pump_websocket

    async def runner_ws(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("x" * size)
        await ws.close(code=4001, message=b"done")
        return ws

    async def gateway_ws(request: web.Request) -> web.WebSocketResponse:
        client_ws = web.WebSocketResponse()
        await client_ws.prepare(request)
        async with aiohttp.ClientSession() as http:
            upstream = await http.ws_connect(f"{runner_url}/ws", max_msg_size=limit)
            await pump_websocket(request, client_ws, upstream)
        return client_ws

    async with (
        serving(route(runner_ws, "/ws")) as runner_url,
        serving(route(gateway_ws, "/ws")) as gateway_url,
        aiohttp.ClientSession() as http,
        http.ws_connect(gateway_url + "/ws") as ws,
    ):
        frames = [msg async for msg in ws]
        assert ws.close_code == code
    if code == 4001:
        assert [len(f.data) for f in frames] == [size]
    else:
        assert frames == []


async def test_a_stream_from_a_runner_gone_silent_is_ended() -> None:
    """A runner sends a keepalive every 15 s; a node that died sends nothing, not even a
    reset: the stream must end rather than hold its task, sockets and slot for ever."""
    from corral.gateway.proxy import UpstreamError, forward_http

    async def silent_runner(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"type": "start"}\n\n')
        await asyncio.sleep(3600)  # the node is gone
        return response

    raised: list[BaseException] = []

    async def gateway(request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as client:
            try:
                return await forward_http(
                    client, request, f"{runner_url}/s", None, "cred", silence_seconds=0.5
                )
            except UpstreamError as error:
                raised.append(error)
                raise

    async with (
        # shutdown_timeout: the silent handler never ends
        serving(route(silent_runner, "/s"), shutdown_timeout=0.1) as runner_url,
        serving(route(gateway, "/s"), shutdown_timeout=0.1) as gateway_url,
        aiohttp.ClientSession() as http,
        http.get(gateway_url + "/s") as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 10)
    assert "sent nothing for 0.5 s" in str(raised[0])


NOT_A_STREAM = b'{"text": "hi", "stream": false}'


async def test_requests_held_for_a_wake_take_a_users_stream_slots() -> None:
    from unittest import mock

    from corral.gateway.server import Gateway, GatewaySettings

    directory = Directory(kube=None)  # type: ignore[arg-type]
    directory.on_session("ADDED", _session("Idle"))
    settings = GatewaySettings(max_streams_per_user=2)
    gateway = Gateway(AliceReviewer(), directory, b"k" * 32, GatewayMetrics(), settings)  # type: ignore[arg-type]
    release = asyncio.Event()

    async def held(*args: Any, **kwargs: Any) -> tuple[str, Any]:
        await release.wait()  # the session is still waking
        raise asyncio.CancelledError  # never reached in this test's assertions

    def request() -> Any:
        return make_mocked_request("POST", "/sessions/ns/s/v1/messages", transport=open_transport())

    with (
        mock.patch.object(gateway, "_endpoint_url", held),
        mock.patch.object(gateway, "_read_body", mock.AsyncMock(return_value=NOT_A_STREAM)),
    ):
        waiting = [asyncio.create_task(gateway.handle(request())) for _ in range(2)]
        await asyncio.sleep(0.05)
        # stream:false, held: a slot all the same (without, it would be held too)
        third = await asyncio.wait_for(gateway.handle(request()), 5)
        assert third.status == 429
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
