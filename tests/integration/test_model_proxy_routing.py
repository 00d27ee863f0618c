"""The model proxy against the real API server (sessions and pods from real watches, the
gateway under the chart's RBAC, status written back) and the fake model as upstream.

No operator runs for this module's namespace: the test makes sessions and their pods
itself (status written here), so a pod's address can be a loopback address of this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from corral.api.tokens import model_credential
from corral.config import ModelProxyConfig
from corral.gateway import budgets, model_keys
from corral.gateway.model_proxy import ModelProxy, build_model_proxy
from corral.gateway.pricing import PriceTable
from corral.kube.client import KubeClient, load_connection
from corral.testing.anthropic_script import ReplyUsage, StreamShape, TextStep, bash, error
from corral.testing.chart_rbac import GATEWAY_TEMPLATES, ChartIdentity, chart_identity
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.gateway import (
    GROUP,
    PLURAL,
    VERSION,
    World,
    free_port,
    scratch_namespace,
    watched_directory,
)
from corral.testing.serving import serving
from testrun import RUN_ID

pytestmark = pytest.mark.integration
KEY = b"model-proxy-test-key-" + b"0" * 32
REAL_KEY = "sk-ant-real-key-only-the-gateway-holds"
PROXY_SETS = ("gateway.modelProxy.enabled=true", "gateway.modelProxy.apiKeySecret.name=k")
TEAM_SECRET = "team-model-key"  # the namespace's own key (modelProxy.namespaceKeys)
Proxy = tuple[str, ModelProxy, CollectorRegistry]
SPEND = "corral-model-spend"  # the chart's name for release `corral`


@pytest.fixture(scope="module")
def mp_namespace(kubeconfig: Path, crd: None, api_client: client.ApiClient) -> Iterator[str]:
    with scratch_namespace(client.CoreV1Api(api_client), f"mp{RUN_ID}") as name:
        yield name


@pytest.fixture(scope="module")
def world(api_client: client.ApiClient, mp_namespace: str) -> World:
    return World(api_client, mp_namespace, runner_port=1)


@pytest.fixture(scope="module")
def identity(
    kubeconfig: Path, mp_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartIdentity]:
    """The gateway's ServiceAccount with the chart's RBAC for it, model proxy on."""
    sets = (*PROXY_SETS, f"gateway.modelProxy.namespaceKeys.{mp_namespace}={TEAM_SECRET}")
    made = chart_identity(
        kubeconfig, mp_namespace, f"mp-{RUN_ID}", tmp_path_factory.mktemp("mp-identity"),
        templates=GATEWAY_TEMPLATES, sets=sets,
    )  # fmt: skip
    yield made
    made.delete()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
def fake(upstream: FakeAnthropic) -> FakeAnthropic:
    upstream.reset()
    upstream.expect_key(REAL_KEY)
    return upstream


@pytest.fixture
async def proxy(
    identity: ChartIdentity, world: World, upstream: FakeAnthropic, tmp_path: Path
) -> AsyncIterator[Proxy]:
    async with _serving(identity, world, upstream, tmp_path) as served:
        yield served


@contextlib.asynccontextmanager
async def _serving(
    identity: ChartIdentity, world: World, upstream: FakeAnthropic, tmp_path: Path,
    **config: Any,
) -> AsyncIterator[Proxy]:  # fmt: skip
    """A model proxy as the gateway runs it, under the chart's RBAC; `config`: more of
    ModelProxyConfig."""
    kube = KubeClient(load_connection(str(identity.kubeconfig)))
    key_file = tmp_path / "model-key"
    key_file.write_text(REAL_KEY + "\n")
    config = ModelProxyConfig(
        url="http://unused:1", upstream_url=upstream.url, key_file=str(key_file),
        status_interval_seconds=1, requests_per_minute=0, tokens_per_minute=0,
        spend_config_map=SPEND, **config,
    )  # fmt: skip
    registry = CollectorRegistry()
    try:
        async with watched_directory(kube, world.namespace) as directory:
            server, meter = build_model_proxy(
                config, directory, KEY, kube, registry, namespace=world.namespace
            )
            metering = asyncio.create_task(meter.run())
            try:
                async with serving(server.app()) as url:
                    yield url, server, registry
            finally:
                metering.cancel()
                await asyncio.gather(metering, return_exceptions=True)
    finally:
        await kube.close()


async def _until(predicate: Any, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def _session(
    world: World, server: ModelProxy, name: str, ip: str = "127.0.0.1", **spec: Any
) -> str:
    """A running session with a pod at `ip`, known to the proxy; its credential."""
    uid = world.create_session(name, **spec)
    world.set_status(name, {"phase": "Running"})
    world.create_ready_pod(name, uid, ip=ip)
    await _until(lambda: bool(server.directory.sessions_at(ip))
                 and any(s.name == name for s in server.directory.sessions_at(ip)))  # fmt: skip
    return model_credential(KEY, world.namespace, name, uid)


def _headers(credential: str) -> dict[str, str]:
    return {
        "x-api-key": credential,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219",
        "content-type": "application/json",
    }


def _request(text: str, stream: bool = True) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": stream,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ")]  # fmt: skip


def _status(world: World, name: str) -> dict[str, Any]:
    body: dict[str, Any] = world.custom.get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, world.namespace, PLURAL, name
    )
    return body.get("status") or {}


def _budget_condition(world: World, name: str) -> dict[str, Any] | None:
    found = [c for c in _status(world, name).get("conditions") or ()
             if c["type"] == "BudgetExceeded"]  # fmt: skip
    return found[0] if found else None


USAGES = [
    ReplyUsage(input_tokens=1200, output_tokens=300, cache_read_input_tokens=4000,
               cache_creation_input_tokens=500, cache_creation_1h_input_tokens=200,
               web_search_requests=2),
    ReplyUsage(input_tokens=70, output_tokens=25, cache_read_input_tokens=0,
               cache_creation_input_tokens=9),
    ReplyUsage(input_tokens=11, output_tokens=3),
]  # fmt: skip


async def test_a_session_calls_the_model_with_the_real_key_and_every_token_is_metered(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, registry = proxy
    credential = await _session(world, server, "chat")
    fake.add(
        TextStep(text="streamed reply", usage=USAGES[0]),
        bash("ls", usage=USAGES[1]),
        TextStep(text="plain json", usage=USAGES[2]),
        error(429, retry_after=7, message="slow down"),
    )
    async with aiohttp.ClientSession() as http:
        post = f"{url}/v1/messages?beta=true"
        async with http.post(post, json=_request("one"), headers=_headers(credential)) as r:
            assert r.status == 200 and r.headers["content-type"] == "text/event-stream"
            assert r.headers["request-id"].startswith("req_fake_")
            first = _sse_events(await r.read())
        async with http.post(post, json=_request("two"), headers=_headers(credential)) as r:
            second = _sse_events(await r.read())
        async with http.post(
            post, json=_request("three", stream=False), headers=_headers(credential)
        ) as r:
            plain = await r.json()
        async with http.post(post, json=_request("four"), headers=_headers(credential)) as r:
            # The upstream's refusal passes through as it is: status, retry-after, body.
            assert r.status == 429 and r.headers["retry-after"] == "7"
            assert (await r.json())["error"] == {"type": "rate_limit_error", "message": "slow down"}
        async with http.post(
            f"{url}/v1/messages/count_tokens?beta=true", json=_request("count", stream=False),
            headers=_headers(credential),
        ) as r:  # fmt: skip
            assert r.status == 200 and (await r.json())["input_tokens"] > 0
    assert first[0]["type"] == "message_start" and first[-1]["type"] == "message_stop"
    assert any(e.get("content_block", {}).get("type") == "tool_use" for e in second)
    assert plain["content"][0]["text"] == "plain json"
    records = fake.requests
    assert len(records) == 5 and all(r.key_ok for r in records), records
    assert records[0].query == {"beta": "true"}
    assert records[0].headers["anthropic-beta"] == "claude-code-20250219"
    # Metrics: exactly the usage the fake reported (the 429 and count_tokens report none).
    labels = {"namespace": world.namespace, "model": "claude-sonnet-4"}

    def tokens(kind: str) -> float | None:
        return registry.get_sample_value("corral_model_tokens_total", labels | {"kind": kind})

    assert tokens("input") == sum(u.input_tokens or 0 for u in USAGES)
    assert tokens("output") == sum(u.output_tokens or 0 for u in USAGES)
    assert tokens("cache_read") == sum(u.cache_read_input_tokens for u in USAGES)
    assert tokens("cache_write") == sum(u.cache_creation_input_tokens for u in USAGES)
    # Status: the same numbers and their cost at the price table, written by the gateway.
    defaults = ModelProxyConfig(url="http://x:1")
    price = PriceTable(defaults.prices, defaults.web_search_usd_per_1000)
    from corral.gateway.usage import TokenUsage

    expected_cost = sum(
        price.cost("claude-sonnet-4-5", TokenUsage(u.input_tokens or 0, u.output_tokens or 0,
                                                   u.cache_read_input_tokens,
                                                   u.cache_creation_input_tokens,
                                                   u.web_search_requests,
                                                   u.cache_creation_1h_input_tokens))
        for u in USAGES
    )  # fmt: skip
    await _until(lambda: (_status(world, "chat").get("modelUsage") or {}).get("requests") == 3)
    usage = _status(world, "chat")["modelUsage"]
    assert usage["inputTokens"] == 1281 and usage["outputTokens"] == 328
    assert usage["cacheReadInputTokens"] == 4000 and usage["cacheCreationInputTokens"] == 509
    assert usage["webSearchRequests"] == 2 and usage["models"][0]["webSearchRequests"] == 2
    # The cache writes kept an hour, told apart: they cost twice the input price, not 1.25.
    assert usage["cacheCreation1hInputTokens"] == 200
    assert usage["models"][0]["cacheCreation1hInputTokens"] == 200
    assert usage["costUsd"] == pytest.approx(expected_cost, abs=1e-6)
    assert usage["models"][0]["model"] == "claude-sonnet-4"


async def test_events_are_passed_on_as_they_arrive(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, _ = proxy
    credential = await _session(world, server, "slow")
    fake.add(TextStep(text="x" * 80, stream=StreamShape(event_delay=0.4)))
    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/messages", json=_request("s"), headers=_headers(credential)) as r,
    ):
        async for _ in r.content.iter_any():
            arrivals.append(time.monotonic())
    # 10 events 0.4 s apart: a buffering proxy would deliver them all at the end.
    assert len(arrivals) >= 5 and arrivals[-1] - arrivals[0] > 2.0


async def test_refused_calls_never_reach_the_upstream(
    proxy: Proxy, world: World, fake: FakeAnthropic, api_client: client.ApiClient
) -> None:
    url, server, registry = proxy
    mine = await _session(world, server, "mine")
    theirs = await _session(world, server, "theirs", ip="127.0.0.2")
    gone = await _session(world, server, "gone", ip="127.0.0.3")
    world.custom.delete_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, "gone")
    await _until(lambda: (world.namespace, "gone") not in server.directory.sessions)
    bodies = []
    async with aiohttp.ClientSession() as http:
        for credential in ("sk-ant-anything", theirs, mine + "x", ""):
            async with http.post(
                f"{url}/v1/messages", json=_request("no"), headers=_headers(credential)
            ) as r:
                bodies.append((r.status, await r.json()))
        # The deleted session's credential, from the address its pod had.
        local = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
        async with (
            aiohttp.ClientSession(connector=local) as elsewhere,
            elsewhere.post(f"{url}/v1/messages", json=_request("no"), headers=_headers(gone)) as r,
        ):
            bodies.append((r.status, await r.json()))
        async with http.get(f"{url}/_fake/requests", headers=_headers(mine)) as r:
            bodies.append((r.status, await r.json()))
    expected = {"type": "error", "error": {"type": "authentication_error",
                                           "message": "invalid x-api-key"}}  # fmt: skip
    assert bodies[:5] == [(401, expected)] * 5
    assert bodies[5][0] == 404 and bodies[5][1]["error"]["type"] == "not_found_error"
    assert fake.requests == []
    assert registry.get_sample_value("corral_model_refused_total", {"reason": "Unauthenticated"})


async def test_a_session_over_its_budget_gets_an_error_naming_it_and_the_condition(
    proxy: Proxy, world: World, fake: FakeAnthropic, api_client: client.ApiClient
) -> None:
    url, server, _ = proxy
    credential = await _session(world, server, "spender", maxBudgetUsd=0.01)
    # 10,000 input tokens at 3 USD per million: 0.03 USD, over the budget after one call.
    fake.set_default(TextStep(text="ok", usage=ReplyUsage(input_tokens=10_000, output_tokens=1)))
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.post(
                f"{url}/v1/messages", json=_request("spend"), headers=_headers(credential)
            ) as r:
                statuses.append((r.status, await r.read()))
    assert statuses[0][0] == 200
    refused = json.loads(statuses[1][1])
    assert statuses[1][0] == 402 and refused["type"] == "error"
    assert refused["error"]["type"] == "billing_error"
    assert "spec.maxBudgetUsd is 0.01 USD" in refused["error"]["message"]
    assert len(fake.message_bodies()) == 1

    await _until(lambda: _budget_condition(world, "spender") is not None)
    exceeded = _budget_condition(world, "spender")
    assert exceeded == exceeded | {"status": "True", "reason": "SessionBudget"}
    core = client.CoreV1Api(api_client)

    def event() -> bool:
        events = core.list_namespaced_event(world.namespace).items
        return any(e.reason == "BudgetExceeded" and e.involved_object.name == "spender"
                   and "maxBudgetUsd" in (e.message or "") for e in events)  # fmt: skip

    await _until(event)


async def test_budget_exceeded_is_set_by_one_refusal_when_another_writer_came_first(
    proxy: Proxy, world: World, api_client: client.ApiClient
) -> None:
    # A refused call may be the session's last: its condition must not wait for another.
    # Here the operator (any writer) changes the session between the proxy's view of it and
    # the condition's write, whose resourceVersion is then stale (409 Conflict).
    _, server, _ = proxy
    await _session(world, server, "contested", maxBudgetUsd=0.01)
    view = server.directory.view(world.namespace, "contested")
    world.set_status("contested", {"phase": "Running", "podName": "contested-elsewhere"})
    server.meter.note_budget(view, "SessionBudget", "spent it")

    await _until(lambda: _budget_condition(world, "contested") is not None)
    exceeded = _budget_condition(world, "contested")
    assert exceeded == exceeded | {"status": "True", "reason": "SessionBudget"}
    # The other writer's change is kept, and the Warning Event is posted once.
    assert _status(world, "contested")["podName"] == "contested-elsewhere"
    core = client.CoreV1Api(api_client)

    def events() -> int:
        return sum(e.reason == "BudgetExceeded" and e.involved_object.name == "contested"
                   for e in core.list_namespaced_event(world.namespace).items)  # fmt: skip

    await _until(lambda: events() >= 1)
    await asyncio.sleep(1)
    assert events() == 1


async def test_per_minute_limits_answer_429_with_retry_after(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, _ = proxy
    credential = await _session(world, server, "busy")
    server.limits = budgets.SessionLimits(requests_per_minute=2, tokens_per_minute=0)
    async with aiohttp.ClientSession() as http:
        answers = []
        for _ in range(3):
            async with http.post(
                f"{url}/v1/messages", json=_request("r"), headers=_headers(credential)
            ) as r:
                await r.read()
                answers.append((r.status, r.headers.get("retry-after")))
    assert answers[:2] == [(200, None), (200, None)]
    assert answers[2][0] == 429 and int(answers[2][1] or 0) >= 1
    assert len(fake.message_bodies()) == 2


async def test_a_namespace_budget_counts_deleted_sessions_and_refuses_the_others(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, _ = proxy
    first = await _session(world, server, "first")
    second = await _session(world, server, "second", ip="127.0.0.4")
    meter = server.meter
    assert meter.spend is not None
    meter.spend.read_always = True  # as with namespace budgets configured at start
    await meter.spend.sync()  # what earlier tests of this namespace spent
    before = meter.namespace_spent(world.namespace)
    server.settings.namespace_budgets_usd = {world.namespace: before + 0.02}
    fake.set_default(TextStep(text="ok", usage=ReplyUsage(input_tokens=10_000, output_tokens=1)))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/v1/messages", json=_request("a"), headers=_headers(first)
        ) as r:
            assert r.status == 200
            await r.read()

        def ledger() -> float:
            body = world.core.read_namespaced_config_map(SPEND, world.namespace)
            value = json.loads((body.data or {}).get(world.namespace, "{}"))
            return float(value.get("usd", 0))

        await _until(lambda: ledger() >= before + 0.03 - 1e-9)
        world.custom.delete_namespaced_custom_object(
            GROUP, VERSION, world.namespace, PLURAL, "first"
        )
        await _until(lambda: (world.namespace, "first") not in server.directory.sessions)
        local = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))
        async with aiohttp.ClientSession(connector=local) as other, other.post(
            f"{url}/v1/messages", json=_request("b"), headers=_headers(second)
        ) as r:  # fmt: skip
            refused = await r.json()
            assert r.status == 402, refused
    assert f"namespace {world.namespace}" in refused["error"]["message"]
    assert len(fake.message_bodies()) == 1

    def reason() -> str | None:
        for condition in _status(world, "second").get("conditions") or ():
            if condition["type"] == "BudgetExceeded":
                return str(condition["reason"])
        return None

    await _until(lambda: reason() == "NamespaceBudget")


def _put_secret(core: client.CoreV1Api, namespace: str, name: str, key: str | None) -> None:
    """Create or replace Secret `name` with ANTHROPIC_API_KEY `key` (None: without it)."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        string_data={"ANTHROPIC_API_KEY": key} if key is not None else {"other": "x"},
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


async def test_a_namespace_with_a_key_of_its_own_pays_with_it(
    identity: ChartIdentity, world: World, fake: FakeAnthropic, tmp_path: Path,
    api_client: client.ApiClient,
) -> None:  # fmt: skip
    core = client.CoreV1Api(api_client)
    keys = {world.namespace: TEAM_SECRET}
    async with (
        _serving(identity, world, fake, tmp_path, namespace_keys=keys,
                 key_refresh_seconds=1) as (url, server, registry),
        aiohttp.ClientSession() as http,
    ):  # fmt: skip
        credential = await _session(world, server, "team")

        async def call() -> tuple[int, dict[str, Any]]:
            async with http.post(
                f"{url}/v1/messages", json=_request("hi", stream=False),
                headers=_headers(credential),
            ) as r:  # fmt: skip
                return r.status, await r.json()

        # Listed but no Secret yet: refused, naming it; never the gateway's own key.
        status, body = await call()
        assert status == 402 and body["error"]["type"] == "billing_error", body
        where = f"Secret {world.namespace}/{TEAM_SECRET} (modelProxy.namespaceKeys)"
        assert f"{where} does not exist" in body["error"]["message"], body
        assert fake.requests == []
        _put_secret(core, world.namespace, TEAM_SECRET, None)
        await asyncio.sleep(model_keys.RETRY_SECONDS + 0.5)
        status, body = await call()
        assert status == 402 and "has no ANTHROPIC_API_KEY" in body["error"]["message"], body
        assert fake.requests == []

        # With its key: the upstream gets exactly that key (the fake answers 401 otherwise).
        _put_secret(core, world.namespace, TEAM_SECRET, "sk-ant-team-one")
        fake.expect_key("sk-ant-team-one")
        fake.add(TextStep(text="paid by the team"), TextStep(text="still the team's"))
        await asyncio.sleep(model_keys.RETRY_SECONDS + 0.5)
        assert (await call())[0] == 200
        # Rotated: the new key within keyRefreshSeconds.
        _put_secret(core, world.namespace, TEAM_SECRET, "sk-ant-team-two")
        fake.expect_key("sk-ant-team-two")
        await asyncio.sleep(1.5)
        assert (await call())[0] == 200
        assert len(fake.requests) == 2
        refused = {"reason": "NamespaceKeyUnavailable"}
        assert registry.get_sample_value("corral_model_refused_total", refused) == 2

        # The API server unreachable: the key read last is used on.
        connection = load_connection(str(identity.kubeconfig))
        dead = KubeClient(replace(connection, server=f"https://127.0.0.1:{free_port()}"))
        server.keys.kube, alive = dead, server.keys.kube
        await asyncio.sleep(1.5)
        assert await server.keys.key_for(world.namespace) == "sk-ant-team-two"
        server.keys.kube = alive
        await dead.close()

    # The chart lets the gateway read that one Secret and no other.
    _put_secret(core, world.namespace, "not-granted", "sk-ant-secret")
    kube = KubeClient(load_connection(str(identity.kubeconfig)))
    try:
        keys_elsewhere = model_keys.ModelKeys("default", {world.namespace: "not-granted"}, kube, 1)
        with pytest.raises(model_keys.KeyUnavailable, match="may not read"):
            await keys_elsewhere.key_for(world.namespace)
        assert await keys_elsewhere.key_for("other-namespace") == "default"
    finally:
        await kube.close()


async def test_calls_in_flight_hold_their_cost_so_parallel_calls_cannot_spend_past_a_budget(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, registry = proxy
    credential = await _session(world, server, "parallel", maxBudgetUsd=0.05)
    # Each call may write 10,000 tokens at 22.5 USD per million (Sonnet's output price with
    # its long-prompt premium: the prompt's length is not known before the call): 0.225 USD,
    # more than the budget, so while one is in flight no other may start. It reports 0.03 USD.
    fake.set_default(TextStep(text="slow " * 20, stream=StreamShape(event_delay=0.2),
                              usage=ReplyUsage(input_tokens=10_000, output_tokens=1)))  # fmt: skip
    body = _request("together") | {"max_tokens": 10_000}

    async def call(http: aiohttp.ClientSession) -> tuple[int, str | None, bytes]:
        async with http.post(f"{url}/v1/messages", json=body, headers=_headers(credential)) as r:
            return r.status, r.headers.get("retry-after"), await r.read()

    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(call(http) for _ in range(5)))
        assert sorted(status for status, _, _ in answers) == [200, 429, 429, 429, 429]
        waiting = [json.loads(raw) for status, _, raw in answers if status == 429]
        assert all(w["error"]["type"] == "rate_limit_error" for w in waiting)
        assert "calls in flight" in waiting[0]["error"]["message"]
        assert all(int(after or 0) >= 1 for status, after, _ in answers if status == 429)
        assert len(fake.message_bodies()) == 1
        # The call ended: its 0.03 USD is spent, its reserve released, the next may start.
        assert (await call(http))[0] == 200
        # 0.06 USD now: over the budget, refused for good.
        status, _, raw = await call(http)
        assert status == 402 and json.loads(raw)["error"]["type"] == "billing_error"
    assert (
        registry.get_sample_value("corral_model_refused_total", {"reason": "SessionBudgetInFlight"})
        == 4
    )
    assert server.meter.session_reserved(server.directory.view(world.namespace, "parallel")) == 0


async def test_calls_in_flight_hold_the_sessions_last_prompt_as_their_input(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, registry = proxy
    credential = await _session(world, server, "growing", maxBudgetUsd=1.0)
    body = _request("again") | {"max_tokens": 100}

    async def call(http: aiohttp.ClientSession) -> int:
        async with http.post(f"{url}/v1/messages", json=body, headers=_headers(credential)) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as http:
        # A first call with a 100,000-token prompt: 0.30 USD at Sonnet's input price.
        long_prompt = ReplyUsage(input_tokens=100_000, output_tokens=1)
        fake.set_default(TextStep(text="ok", usage=long_prompt))
        assert await call(http) == 200
        # Each next call holds its output (100 tokens: 0.00225 USD) and that prompt again:
        # with 0.30 spent, three fit under 1 USD (0.907 held), a fourth would not (1.209).
        # Holding the output alone, all five would start.
        slow = StreamShape(event_delay=0.2)
        fake.set_default(TextStep(text="slow " * 20, stream=slow, usage=long_prompt))
        statuses = await asyncio.gather(*(call(http) for _ in range(5)))
    assert sorted(statuses) == [200, 200, 200, 429, 429]
    assert len(fake.message_bodies()) == 4
    refused = {"reason": "SessionBudgetInFlight"}
    assert registry.get_sample_value("corral_model_refused_total", refused) == 2
    view = server.directory.view(world.namespace, "growing")
    assert server.meter.session_reserved(view) == 0
    assert server.meter.prompt_estimate(view) == pytest.approx(0.30)


async def test_a_client_that_hangs_up_mid_stream_pays_for_what_it_was_sent(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, registry = proxy
    credential = await _session(world, server, "quitter")
    fake.add(TextStep(text="word " * 2000, stream=StreamShape(event_delay=0.01),
                      usage=ReplyUsage(input_tokens=10, output_tokens=2500)))  # fmt: skip
    received = b""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/messages", json=_request("q"), headers=_headers(credential)) as r,
    ):
        async for chunk in r.content.iter_any():
            received += chunk
            if received.count(b"content_block_delta") >= 40:
                break  # and hang up: the message_delta with the output count never comes
    seen = [e["delta"].get("text", "") for e in _sse_events(received[: received.rfind(b"\n\n")])
            if e["type"] == "content_block_delta"]  # fmt: skip
    labels = {"namespace": world.namespace, "model": "claude-sonnet-4", "kind": "output"}

    def output() -> float:
        return registry.get_sample_value("corral_model_tokens_total", labels) or 0.0

    await _until(lambda: output() > 1)  # message_start's 1 was all it paid before
    assert output() >= len("".join(seen)) // 4


async def test_count_tokens_counts_against_the_per_minute_limit_before_its_body_is_read(
    proxy: Proxy, world: World, fake: FakeAnthropic
) -> None:
    url, server, _ = proxy
    credential = await _session(world, server, "counter")
    server.limits = budgets.SessionLimits(requests_per_minute=1, tokens_per_minute=0)
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(2):
            async with http.post(
                f"{url}/v1/messages/count_tokens",
                json=_request("x" * 100_000, stream=False),
                headers=_headers(credential),
            ) as r:
                await r.read()
                statuses.append(r.status)
    assert statuses == [200, 429]
    assert [r.path for r in fake.requests] == ["/v1/messages/count_tokens"]
