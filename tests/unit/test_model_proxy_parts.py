"""Pure parts of the model proxy: usage out of SSE streams and JSON, prices, budgets and
per-minute limits, the per-session credential and who may present it, status arithmetic."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from corral.api.tokens import MODEL_CREDENTIAL_PREFIX, model_credential, runner_credential
from corral.config import ModelPrice, ModelProxyConfig, OperatorConfig, ScraperPeer
from corral.gateway import budgets
from corral.gateway.directory import Directory
from corral.gateway.metering import Meter, ModelMetrics, _Pending, merged_usage
from corral.gateway.model_proxy import (
    allowed,
    authenticate,
    normal_ip,
    presented_credential,
    upstream_request_headers,
)
from corral.gateway.pricing import PriceTable
from corral.gateway.usage import ResponseUsage, SseUsageReader, TokenUsage, usage_of_json
from corral.testing import anthropic_wire as wire
from corral.testing.anthropic_script import ReplyUsage, TextStep, bash

KEY = b"k" * 40

# --- usage out of responses --------------------------------------------------------------


def _stream(step: Any) -> tuple[bytes, wire.Reply]:
    reply = wire.resolve(step, {"model": "claude-sonnet-4-5", "messages": []})
    return b"".join(wire.sse_frame(e) for e in wire.stream_events(reply)), reply


USAGE = ReplyUsage(
    input_tokens=1234, output_tokens=567, cache_read_input_tokens=89,
    cache_creation_input_tokens=10,
)  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_sse_usage_is_read_whatever_the_chunking(chunk: int) -> None:
    body, _ = _stream(TextStep(text="a fairly long reply " * 20, usage=USAGE))
    reader = SseUsageReader()
    for start in range(0, len(body), chunk):
        reader.feed(body[start : start + chunk])
    assert reader.result.seen and reader.result.model == "claude-sonnet-4-5"
    assert reader.result.usage == TokenUsage(1234, 567, 89, 10)


def test_sse_usage_with_crlf_lines_and_tool_use() -> None:
    body, _ = _stream(bash("ls -la", usage=USAGE))
    reader = SseUsageReader()
    reader.feed(body.replace(b"\n", b"\r\n"))
    assert reader.result.usage == TokenUsage(1234, 567, 89, 10)


def test_message_delta_counts_replace_those_of_message_start() -> None:
    events = [
        {"type": "message_start", "message": {"model": "m", "usage": {
            "input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 3}}},
        {"type": "message_delta", "usage": {"output_tokens": 40}},
        {"type": "message_delta", "usage": {"output_tokens": 42, "input_tokens": 6}},
    ]  # fmt: skip
    reader = SseUsageReader()
    for event in events:
        reader.feed(wire.sse_frame(event))
    assert reader.result.usage == TokenUsage(6, 42, 3, 0)


def test_a_stream_without_usage_is_not_seen_and_bad_counts_are_ignored() -> None:
    reader = SseUsageReader()
    reader.feed(b'event: ping\ndata: {"type": "ping"}\n\n')
    assert not reader.result.seen
    reader.feed(wire.sse_frame({"type": "message_delta", "usage": {"output_tokens": -3}}))
    reader.feed(wire.sse_frame({"type": "message_delta", "usage": {"input_tokens": True}}))
    assert reader.result.usage == TokenUsage()


@pytest.mark.parametrize("chunk", [1, 100, 100_000])
def test_an_oversized_event_is_skipped_without_growing_memory(chunk: int) -> None:
    reader = SseUsageReader(max_event_bytes=1000)
    start = wire.sse_frame({"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 5, "output_tokens": 1}}})  # fmt: skip
    huge_line = b"data: " + b"x" * 5000 + b"\n\n"
    huge_event = b"".join(b"data: " + b"y" * 600 + b"\n" for _ in range(4)) + b"\n"
    delta = wire.sse_frame({"type": "message_delta", "usage": {"output_tokens": 9}})
    body = start + huge_line + huge_event + delta
    peak = 0
    for at in range(0, len(body), chunk):
        reader.feed(body[at : at + chunk])
        peak = max(peak, len(reader._partial) + reader._data_bytes)
    assert peak <= 1000 + chunk
    assert reader.final().usage == TokenUsage(5, 9, 0, 0)  # the count went on after them


def test_a_stream_cut_before_its_message_delta_is_metered_by_its_content() -> None:
    body, _ = _stream(TextStep(text="word " * 2000, usage=USAGE))
    cut = body[: body.index(b"message_delta")]
    reader = SseUsageReader()
    reader.feed(cut)
    usage = reader.final().usage
    # message_start says 1 output token (as the API does); the deltas carried 10,000 bytes.
    assert usage.input_tokens == 1234
    assert 10_000 // 4 <= usage.output_tokens <= len(cut) // 4
    whole = SseUsageReader()
    whole.feed(body)
    assert whole.final().usage == TokenUsage(1234, 567, 89, 10)  # stated: taken as it is


def _metered(step: TextStep, stream: bool) -> ResponseUsage:
    """What the proxy reads of `step`'s reply, streamed or as plain JSON."""
    if stream:
        body, _ = _stream(step)
        reader = SseUsageReader()
        reader.feed(body)
        return reader.final()
    reply = wire.resolve(step, {"model": "claude-sonnet-4-5"})
    return usage_of_json(json.dumps(wire.message_json(reply)).encode())


@pytest.mark.parametrize("stream", [True, False], ids=["sse", "json"])
def test_web_searches_are_read_and_priced_apart_from_tokens(stream: bool) -> None:
    usage = ReplyUsage(input_tokens=1000, output_tokens=100, web_search_requests=3)
    result = _metered(TextStep(text="found it", usage=usage), stream)
    assert result.usage == TokenUsage(1000, 100, 0, 0, web_search_requests=3)
    assert result.usage.total == 1100  # tokens per minute count tokens only
    table = PriceTable([_price("claude-sonnet-4", 3, 15, 0, 0)], web_search_usd_per_1000=10)
    # 1,000 x 3 + 100 x 15 per million, and 3 searches at 10 USD per 1,000.
    assert table.cost(result.model, result.usage) == pytest.approx(0.0045 + 0.03)


@pytest.mark.parametrize("stream", [True, False], ids=["sse", "json"])
def test_cache_writes_kept_an_hour_are_read_and_priced_at_their_own_rate(stream: bool) -> None:
    usage = ReplyUsage(input_tokens=1000, output_tokens=100, cache_creation_input_tokens=3000,
                       cache_creation_1h_input_tokens=2000)  # fmt: skip
    result = _metered(TextStep(text="cached", usage=usage), stream)
    assert result.usage == TokenUsage(1000, 100, 0, 3000, cache_creation_1h_input_tokens=2000)
    assert result.usage.total == 4100  # the hour's writes are among the writes, not beside
    # 1,000 in x 3 + 100 out x 15 + 1,000 5-minute writes x 3.75 + 2,000 hour writes at
    # twice the input price (6) unless the row names its own hour rate.
    table = PriceTable([_price("claude-sonnet-4", 3, 15, 0.3, 3.75)])
    assert table.cost(result.model, result.usage) == pytest.approx(0.02025)
    hour_priced = _price("claude-sonnet-4", 3, 15, 0.3, 3.75).model_copy(
        update={"cache_write_1h": 5.0}
    )
    assert PriceTable([hour_priced]).cost(result.model, result.usage) == pytest.approx(0.01825)
    # Before the hour's writes were told apart, all 3,000 cost 3.75: 37.5 % less for them.
    assert table.cost(result.model, TokenUsage(1000, 100, 0, 3000)) == pytest.approx(0.01575)


def test_hour_writes_that_exceed_the_writes_are_charged_as_stated() -> None:
    table = PriceTable([_price("m", 1, 1, 1, 1)])  # hour writes at 2
    odd = TokenUsage(0, 0, 0, 10, cache_creation_1h_input_tokens=50)
    assert table.cost("m", odd) == pytest.approx(100 / 1e6)  # never a negative share


def test_a_long_prompt_pays_the_models_premium_on_every_token() -> None:
    table = PriceTable(ModelProxyConfig(url="http://gw:8082").prices)
    # 200,000 tokens of prompt (input and cache reads and writes) is not over the line.
    at_line = TokenUsage(100_000, 1_000, 60_000, 40_000, cache_creation_1h_input_tokens=10_000)
    base = (100_000 * 3 + 60_000 * 0.3 + 30_000 * 3.75 + 10_000 * 6) / 1e6
    assert table.cost("claude-sonnet-4-5", at_line) == pytest.approx(base + 1_000 * 15 / 1e6)
    over = TokenUsage(100_001, 1_000, 60_000, 40_000, cache_creation_1h_input_tokens=10_000)
    premium = (base + 3 / 1e6) * 2 + 1_000 * 15 * 1.5 / 1e6
    assert table.cost("claude-sonnet-4-5", over) == pytest.approx(premium)
    # A model without a premium pays its rates whatever the prompt's length.
    long_haiku = TokenUsage(900_000, 1_000, 0, 0)
    assert table.cost("claude-haiku-4-5", long_haiku) == pytest.approx(0.9 + 0.005)


def test_a_calls_prompt_cost_is_its_cost_without_output_with_the_long_prompt_premium() -> None:
    table = PriceTable(ModelProxyConfig(url="http://gw:8082").prices)
    over = TokenUsage(100_001, 1_000, 60_000, 40_000, cache_creation_1h_input_tokens=10_000)
    prompt = (100_001 * 3 + 60_000 * 0.3 + 30_000 * 3.75 + 10_000 * 6) * 2 / 1e6
    assert table.prompt_cost("claude-sonnet-4-5", over) == pytest.approx(prompt)
    output = 1_000 * 15 * 1.5 / 1e6
    assert table.cost("claude-sonnet-4-5", over) == pytest.approx(prompt + output)


def test_the_in_flight_reserve_holds_the_dearest_output_a_call_can_pay() -> None:
    table = PriceTable(ModelProxyConfig(url="http://gw:8082").prices)
    sonnet = b'{"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": []}'
    haiku = b'{"model": "claude-haiku-4-5", "max_tokens": 1000, "messages": []}'
    # Sonnet's output may be charged 1.5 times (its prompt is not known before the call).
    assert table.call_reserve(sonnet) == pytest.approx(1000 * 15 * 1.5 / 1e6)
    assert table.call_reserve(haiku) == pytest.approx(1000 * 5 / 1e6)


def test_usage_of_a_plain_json_reply() -> None:
    reply = wire.resolve(TextStep(text="hi", usage=USAGE), {"model": "claude-haiku-4-5"})
    result = usage_of_json(json.dumps(wire.message_json(reply)).encode())
    assert (result.model, result.usage) == ("claude-haiku-4-5", TokenUsage(1234, 567, 89, 10))
    assert not usage_of_json(b"not json").seen
    assert not usage_of_json(b'{"input_tokens": 5}').seen  # count_tokens' answer


# --- prices ------------------------------------------------------------------------------


def _price(model: str, i: float, o: float, r: float, w: float) -> ModelPrice:
    return ModelPrice(model=model, input=i, output=o, cache_read=r, cache_write=w)


def test_the_longest_prefix_prices_a_model_and_unknown_models_pay_the_most() -> None:
    table = PriceTable([_price("claude-opus-4", 15, 75, 1.5, 18.75),
                        _price("claude-opus-4-5", 5, 25, 0.5, 6.25)])  # fmt: skip
    usage = TokenUsage(1_000_000, 1_000_000, 1_000_000, 1_000_000)
    assert table.cost("claude-opus-4-5-20251101", usage) == pytest.approx(5 + 25 + 0.5 + 6.25)
    assert table.cost("claude-opus-4-1", usage) == pytest.approx(15 + 75 + 1.5 + 18.75)
    assert table.cost("mystery", usage) == pytest.approx(15 + 75 + 1.5 + 18.75)
    assert table.label("claude-opus-4-5-20251101") == "claude-opus-4-5"
    assert table.label("mystery") == table.label(None) == "other"


def test_default_prices_cover_the_default_model() -> None:
    table = PriceTable(ModelProxyConfig(url="http://gw:8082").prices)
    assert table.cost("claude-sonnet-4-5", TokenUsage(100_000, 0, 0, 0)) == pytest.approx(0.3)


# --- budgets and limits ------------------------------------------------------------------


def test_a_session_budget_refuses_once_spent_and_names_itself() -> None:
    assert budgets.session_budget(None, 1e9) is None
    assert budgets.session_budget(0.5, 0.4999) is None
    refused = budgets.session_budget(0.5, 0.5)
    assert refused is not None and refused.status == 402
    assert "spec.maxBudgetUsd is 0.50 USD" in refused.message
    ns = budgets.namespace_budget("team-a", 10.0, 12.0)
    assert ns is not None and "namespace team-a" in ns.message
    assert budgets.namespace_budget("team-a", None, 12.0) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_allow_a_minutes_burst_then_refill() -> None:
    clock = Clock()
    limits = budgets.SessionLimits(3, 0, clock=clock)
    assert [limits.take("s") for _ in range(3)] == [None, None, None]
    refused = limits.take("s")
    assert refused is not None and refused.status == 429 and refused.retry_after == 20
    assert limits.take("other") is None  # per session
    clock.now += 20
    assert limits.take("s") is None


def test_tokens_per_minute_count_finished_calls_of_the_last_minute() -> None:
    clock = Clock()
    limits = budgets.SessionLimits(0, 1000, clock=clock)
    limits.used("s", 600)
    clock.now += 30
    limits.used("s", 400)
    refused = limits.take("s")
    assert refused is not None and refused.reason == "TokensPerMinute"
    assert refused.retry_after == 30
    clock.now += 30.5
    assert limits.take("s") is None


def test_limits_forget_the_least_recent_sessions_beyond_their_bound() -> None:
    limits = budgets.SessionLimits(1, 0, max_sessions=2, clock=Clock())
    for name in ("a", "b", "c"):
        assert limits.take(name) is None
    assert len(limits._windows) == 2


# --- credentials -------------------------------------------------------------------------


def _session(directory: Directory, name: str, uid: str, budget: float | None = None) -> None:
    spec: dict[str, Any] = {"pattern": "LongRunning"}
    if budget is not None:
        spec["maxBudgetUsd"] = budget
    directory.on_session("ADDED", {
        "metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": "7"},
        "spec": spec, "status": {"phase": "Running"},
    })  # fmt: skip


def _pod(directory: Directory, name: str, owner: str, ip: str, kind: str = "ADDED",
         phase: str = "Running") -> None:  # fmt: skip
    directory.on_pod(kind, {
        "metadata": {"namespace": "ns", "name": name, "uid": f"pod-{name}",
                     "ownerReferences": [{"uid": owner, "controller": True}]},
        "status": {"podIP": ip, "phase": phase},
    })  # fmt: skip


def test_the_credential_is_per_session_and_distinct_from_the_runner_credential() -> None:
    a = model_credential(KEY, "ns", "a", "uid-a")
    assert a.startswith(MODEL_CREDENTIAL_PREFIX)
    assert a != model_credential(KEY, "ns", "a", "uid-a2")  # a same-named successor
    assert a != model_credential(KEY, "ns", "b", "uid-a")
    assert a != model_credential(b"x" * 40, "ns", "a", "uid-a")
    assert a.removeprefix(MODEL_CREDENTIAL_PREFIX) != runner_credential(KEY, "ns", "a", "uid-a")


def test_a_credential_counts_only_from_its_own_sessions_live_pod() -> None:
    directory = Directory(None)  # type: ignore[arg-type]
    _session(directory, "a", "uid-a")
    _session(directory, "b", "uid-b")
    _pod(directory, "a-1", "uid-a", "10.0.0.5")
    _pod(directory, "b-1", "uid-b", "10.0.0.6")
    cred_a = model_credential(KEY, "ns", "a", "uid-a")
    found = authenticate(directory, KEY, cred_a, "10.0.0.5")
    assert found is not None and found.name == "a"
    assert authenticate(directory, KEY, cred_a, "10.0.0.6") is None  # b's pod
    assert authenticate(directory, KEY, cred_a, "10.0.0.7") is None  # nobody's
    assert authenticate(directory, KEY, cred_a + "0", "10.0.0.5") is None
    assert authenticate(directory, KEY, None, "10.0.0.5") is None
    assert authenticate(directory, b"y" * 40, cred_a, "10.0.0.5") is None
    # A terminating pod still counts (it drains its turn); a finished or deleted one not.
    _pod(directory, "a-1", "uid-a", "10.0.0.5", phase="Succeeded", kind="MODIFIED")
    assert authenticate(directory, KEY, cred_a, "10.0.0.5") is None
    _pod(directory, "a-1", "uid-a", "10.0.0.5", kind="MODIFIED")
    _pod(directory, "a-1", "uid-a", "10.0.0.5", kind="DELETED")
    assert authenticate(directory, KEY, cred_a, "10.0.0.5") is None
    # A deleted session's credential is revoked, even from a pod still at that address.
    _pod(directory, "a-2", "uid-a", "10.0.0.8")
    assert authenticate(directory, KEY, cred_a, "10.0.0.8") is not None
    directory.on_session("DELETED", {"metadata": {"namespace": "ns", "name": "a", "uid": "uid-a"}})
    assert authenticate(directory, KEY, cred_a, "10.0.0.8") is None


def test_pods_seen_before_their_session_are_found_once_it_arrives() -> None:
    directory = Directory(None)  # type: ignore[arg-type]
    _pod(directory, "a-1", "uid-a", "10.0.0.5")
    _session(directory, "a", "uid-a")
    assert authenticate(directory, KEY, model_credential(KEY, "ns", "a", "uid-a"), "10.0.0.5")


def test_credentials_come_from_x_api_key_or_a_bearer_token() -> None:
    assert presented_credential({"x-api-key": " k "}) == "k"
    assert presented_credential({"authorization": "Bearer t"}) == "t"
    assert presented_credential({"authorization": "Basic t"}) is None
    assert normal_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert normal_ip("fd00::1") == "fd00::1"
    assert normal_ip("garbage") == normal_ip(None) == ""


def test_the_upstream_gets_the_real_key_and_none_of_the_callers_secrets() -> None:
    headers = upstream_request_headers(
        {"x-api-key": "corral-session-abc", "Authorization": "Bearer x", "anthropic-version":
         "2023-06-01", "anthropic-beta": "b1", "Host": "gw", "Accept-Encoding": "gzip",
         "Cookie": "c", "X-Forwarded-For": "1.2.3.4"}, "sk-real"
    )  # fmt: skip
    assert headers == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "b1",
        "x-api-key": "sk-real",
        "accept-encoding": "identity",
    }


@pytest.mark.parametrize(
    ("method", "path", "ok"),
    [("POST", "/v1/messages", True), ("POST", "/v1/messages/count_tokens", True),
     ("GET", "/v1/models", True), ("GET", "/v1/models/claude-x", True),
     ("GET", "/v1/messages", False), ("POST", "/v1/messages/batches", False),
     ("GET", "/v1/models/a/b", False), ("POST", "/v1/complete", False),
     ("GET", "/_fake/requests", False)],
)  # fmt: skip
def test_only_the_messages_api_the_cli_uses_is_served(method: str, path: str, ok: bool) -> None:
    assert allowed(method, path) is ok


# --- metering and status -----------------------------------------------------------------


def test_merged_usage_adds_pending_usage_to_what_status_holds() -> None:
    current = {"requests": 2, "inputTokens": 10, "outputTokens": 20, "cacheReadInputTokens": 1,
               "cacheCreationInputTokens": 0, "costUsd": 0.5,
               "models": [{"model": "claude-sonnet-4", "inputTokens": 10, "outputTokens": 20,
                           "cacheReadInputTokens": 1, "costUsd": 0.5}]}  # fmt: skip
    pending = _Pending("ns", "a", "uid", requests=3, cost_usd=0.25)
    hour_written = TokenUsage(1, 1, 1, 1, cache_creation_1h_input_tokens=1)
    pending.models = {"claude-sonnet-4": TokenUsage(5, 5, 0, 0), "other": hour_written}
    pending.model_costs = {"claude-sonnet-4": 0.2, "other": 0.05}
    merged = merged_usage(current, pending, "2026-01-01T00:00:00Z")
    assert merged["requests"] == 5 and merged["costUsd"] == pytest.approx(0.75)
    assert (merged["inputTokens"], merged["outputTokens"]) == (16, 26)
    assert (merged["cacheReadInputTokens"], merged["cacheCreationInputTokens"]) == (2, 1)
    rows = {row["model"]: row for row in merged["models"]}
    assert rows["claude-sonnet-4"]["inputTokens"] == 15
    assert rows["claude-sonnet-4"]["costUsd"] == pytest.approx(0.7)
    assert rows["other"]["cacheCreationInputTokens"] == 1
    assert rows["other"]["cacheCreation1hInputTokens"] == merged["cacheCreation1hInputTokens"] == 1
    assert merged_usage(None, pending, "t")["requests"] == 3


def test_the_meter_counts_spend_on_top_of_status_until_written() -> None:
    directory = Directory(None)  # type: ignore[arg-type]
    _session(directory, "a", "uid-a")
    registry = CollectorRegistry()
    meter = Meter(PriceTable([_price("m", 1, 2, 0, 0)]), ModelMetrics(registry), directory, None)
    view = directory.view("ns", "a")
    view.model_usage = {"costUsd": 1.0}
    cost = meter.record(view, "m-1", TokenUsage(1_000_000, 500_000, 7, 3))
    assert cost == pytest.approx(2.0)
    assert meter.session_spent(view) == pytest.approx(3.0)
    assert meter.namespace_spent("ns") == pytest.approx(3.0)
    sample = registry.get_sample_value
    labels = {"namespace": "ns", "model": "m"}
    assert sample("corral_model_tokens_total", labels | {"kind": "input"}) == 1_000_000
    assert sample("corral_model_tokens_total", labels | {"kind": "cache_write"}) == 3
    assert sample("corral_model_cost_usd_total", labels) == pytest.approx(2.0)


def test_a_sessions_next_call_is_estimated_at_its_last_metered_prompt() -> None:
    directory = Directory(None)  # type: ignore[arg-type]
    _session(directory, "a", "uid-a")
    _session(directory, "b", "uid-b")
    now = [0.0]
    table = PriceTable([_price("m", 1, 2, 0.1, 1.25)])
    meter = Meter(table, ModelMetrics(CollectorRegistry()), directory, None, clock=lambda: now[0])
    a, b = directory.view("ns", "a"), directory.view("ns", "b")
    assert meter.prompt_estimate(a) == 0.0  # a first call: nothing known
    meter.record(a, "m", TokenUsage(1_000, 500_000, 2_000_000, 0))  # 0.001 + 0.2 USD of prompt
    assert meter.prompt_estimate(a) == pytest.approx(0.201)
    assert meter.prompt_estimate(b) == 0.0
    meter.record(a, "m", TokenUsage(10, 5, 0, 0))  # the last call's, not the largest
    assert meter.prompt_estimate(a) == pytest.approx(10 / 1e6)
    now[0] += 3601  # forgotten after an hour without calls
    assert meter.prompt_estimate(a) == 0.0


# --- configuration -----------------------------------------------------------------------


GATEWAY = ScraperPeer(namespace="corral-system", pod_labels={"app": "gw"})


def test_the_model_proxy_needs_the_gateway_and_refuses_keys_in_runner_env() -> None:
    proxy = ModelProxyConfig(url="http://gw.corral-system.svc:8082")
    with pytest.raises(ValidationError, match="modelProxy needs gateway"):
        OperatorConfig(model_proxy=proxy)
    with pytest.raises(ValidationError, match="runnerEnv sets ANTHROPIC_API_KEY"):
        OperatorConfig(model_proxy=proxy, gateway=GATEWAY,
                       runner_env={"ANTHROPIC_API_KEY": "sk-ant-x"})  # fmt: skip
    assert OperatorConfig(model_proxy=proxy, gateway=GATEWAY).model_proxy is proxy


def test_every_model_proxy_metric_is_documented() -> None:
    from test_docs import DOCS, documented_metrics, exposed_names

    registry = CollectorRegistry()
    ModelMetrics(registry)
    assert documented_metrics(DOCS / "model-proxy.md") == exposed_names([registry])


# --- the namespace spend ledger ----------------------------------------------------------


def test_the_ledger_counts_this_month_only_and_ignores_bad_entries() -> None:
    from corral.gateway.spend import entry, parse_ledger

    data = {
        "team-a": entry("2026-12", 1.5),
        "team-b": entry("2026-11", 9.0),  # last month: starts again
        "team-c": "not json",
        "team-d": json.dumps({"period": "2026-12", "usd": -1}),
    }
    assert parse_ledger(data, "2026-12") == {"team-a": 1.5}
    assert parse_ledger(None, "2026-12") == {}


class FakeKube:
    """Just enough of KubeClient for the ledger: one ConfigMap, resourceVersion checked."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.conflict_next = False

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        from corral.kube.client import ApiError

        if self.body is None:
            raise ApiError(404, "NotFound", "gone")
        return json.loads(json.dumps(self.body))

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.body = manifest | {"metadata": manifest["metadata"] | {
            "resourceVersion": str(self.version)}}  # fmt: skip
        return await self.get("", "", "")

    async def patch(self, kind: str, namespace: str, name: str, patch: Any) -> dict[str, Any]:
        from corral.kube.client import ApiError

        assert self.body is not None
        if self.conflict_next or patch["metadata"]["resourceVersion"] != str(self.version):
            self.conflict_next = False
            raise ApiError(409, "Conflict", "changed")
        self.version += 1
        self.body["data"].update(patch["data"])
        self.body["metadata"]["resourceVersion"] = str(self.version)
        return await self.get("", "", "")


async def test_the_ledger_adds_each_replicas_spend_once_across_conflicts() -> None:
    from corral.gateway.spend import NamespaceSpend

    kube = FakeKube()
    one = NamespaceSpend(kube, "corral-system", "spend", clock=lambda: "2026-12")  # type: ignore[arg-type]
    two = NamespaceSpend(kube, "corral-system", "spend", clock=lambda: "2026-12")  # type: ignore[arg-type]
    one.add("team-a", 1.0)
    two.add("team-a", 0.25)
    assert one.spent("team-a") == 1.0
    await one.sync()  # creates the ConfigMap, then adds
    kube.conflict_next = True
    await two.sync()  # conflict: kept pending
    assert two.pending == {"team-a": 0.25} and two.spent("team-a") == pytest.approx(1.25)
    await two.sync()
    await one.sync()
    assert one.spent("team-a") == two.spent("team-a") == pytest.approx(1.25)
    assert one.pending == two.pending == {}


async def test_a_new_month_starts_the_ledger_again() -> None:
    from corral.gateway.spend import NamespaceSpend

    kube = FakeKube()
    period = ["2026-11"]
    ledger = NamespaceSpend(kube, "ns", "spend", clock=lambda: period[0])  # type: ignore[arg-type]
    ledger.add("team-a", 5.0)
    await ledger.sync()
    assert ledger.spent("team-a") == 5.0
    period[0] = "2026-12"
    await ledger.sync()
    assert ledger.spent("team-a") == 0.0


async def test_without_namespace_budgets_the_ledger_is_only_written_to() -> None:
    from corral.gateway.spend import NamespaceSpend

    kube = FakeKube()
    ledger = NamespaceSpend(kube, "ns", "spend", read_always=False)  # type: ignore[arg-type]
    await ledger.sync()
    assert kube.body is None  # nothing to add: not even read
    ledger.add("team-a", 2.0)
    await ledger.sync()
    assert kube.body is not None and ledger.spent("team-a") == 2.0


# --- the meter against a failing API server ------------------------------------------------


class StatusKube:
    """Status patches of AgentSessions: fails the next `fail` with `error`, records the rest."""

    def __init__(self, fail: int = 0, error: BaseException | None = None) -> None:
        self.fail, self.error = fail, error
        self.patches: list[dict[str, Any]] = []

    async def patch(self, kind: str, namespace: str, name: str, patch: Any,
                    sub: str | None = None) -> dict[str, Any]:  # fmt: skip
        if self.fail:
            self.fail -= 1
            assert self.error is not None
            raise self.error
        self.patches.append(patch)
        return {"metadata": {"namespace": namespace, "name": name, "uid": "uid-a",
                             "resourceVersion": str(len(self.patches) + 7)},
                "spec": {"pattern": "LongRunning"}, "status": patch["status"]}  # fmt: skip

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return manifest  # Events


@pytest.mark.parametrize("error", [TimeoutError(), ConnectionResetError("reset")])
async def test_usage_survives_a_status_write_lost_on_the_way(error: BaseException) -> None:
    import asyncio

    kube = StatusKube(fail=1, error=error)
    directory = Directory(None)  # type: ignore[arg-type]
    _session(directory, "a", "uid-a")
    meter = Meter(PriceTable([_price("m", 1, 2, 0, 0)]), ModelMetrics(CollectorRegistry()),
                  directory, kube, interval_seconds=0.01)  # type: ignore[arg-type]  # fmt: skip
    view = directory.view("ns", "a")
    meter.record(view, "m-1", TokenUsage(1_000_000, 0, 0, 0))
    running = asyncio.create_task(meter.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if kube.patches:
                break
        assert not running.done()  # the failed round did not end the meter (nor the gateway)
        assert len(kube.patches) == 1, "the usage was not written on the next round"
        assert kube.patches[0]["status"]["modelUsage"]["costUsd"] == pytest.approx(1.0)
        assert meter.session_spent(directory.view("ns", "a")) == pytest.approx(1.0)
    finally:
        running.cancel()


async def test_budget_exceeded_is_noted_again_once_cleared_and_for_a_new_session() -> None:
    import asyncio

    now = [0.0]
    kube = StatusKube()
    directory = Directory(kube)  # type: ignore[arg-type]
    _session(directory, "a", "uid-a")
    meter = Meter(PriceTable([]), ModelMetrics(CollectorRegistry()), directory,
                  kube, clock=lambda: now[0])  # type: ignore[arg-type]  # fmt: skip

    def conditions_patched() -> int:
        return sum("conditions" in p["status"] for p in kube.patches)

    async def refused_twice() -> None:
        view = directory.view("ns", "a")
        meter.note_budget(view, "SessionBudget", "spent")
        meter.note_budget(view, "SessionBudget", "spent")  # before the watch brings it
        await asyncio.sleep(0.05)

    await refused_twice()
    assert conditions_patched() == 1
    now[0] += 120  # the user raised the budget and deleted the condition meanwhile
    await refused_twice()
    assert conditions_patched() == 2
    _session(directory, "a", "uid-a2")  # deleted and made again under the same name
    await refused_twice()
    assert conditions_patched() == 3
