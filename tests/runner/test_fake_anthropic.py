"""The fake Messages API on its own: wire shapes, script, faults, recording, admin API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from corral.testing.anthropic_script import (
    ReplyUsage,
    StreamShape,
    TextStep,
    bash,
    error,
    text,
)
from corral.testing.fake_anthropic import FakeAnthropic, steps_json

REQUEST = {
    "model": "claude-test",
    "max_tokens": 100,
    "stream": True,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hello fake"}]}],
    # Fields the fake does not know must not bother it.
    "thinking": {"type": "disabled"},
    "metadata": {"user_id": "x"},
    "context_management": {"edits": []},
}


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeAnthropic, aiohttp.ClientSession]]:
    fake = FakeAnthropic()
    await fake.start()
    async with aiohttp.ClientSession(
        base_url=fake.url, headers={"x-api-key": "sk-secret-value-123"}
    ) as http:
        yield fake, http
    await fake.stop()


async def sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


async def test_text_reply_streams_the_full_event_sequence(api: Any) -> None:
    fake, http = api
    fake.add(text("Hello there, this is a longer reply"))
    async with http.post("/v1/messages?beta=true", json=REQUEST) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(resp)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and "content_block_stop" in names
    assert all(n == data["type"] for n, data in events)
    deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Hello there, this is a longer reply"
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn" and final["usage"]["output_tokens"] > 0


async def test_tool_use_reply_sends_input_json_deltas(api: Any) -> None:
    fake, http = api
    fake.add(bash("echo hi > out.txt", text="Running it"))
    async with http.post("/v1/messages", json=REQUEST) as resp:
        events = await sse_events(resp)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [s["type"] for s in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "Bash" and starts[1]["id"].startswith("toolu_")
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial)["command"] == "echo hi > out.txt"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_non_streaming_reply_is_one_message(api: Any) -> None:
    fake, http = api
    fake.add(TextStep(text="plain", usage=ReplyUsage(input_tokens=7, output_tokens=3)))
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        body = await resp.json()
    assert body["type"] == "message" and body["content"] == [{"type": "text", "text": "plain"}]
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 3


async def test_default_reply_echoes_the_last_user_text(api: Any) -> None:
    fake, http = api
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        body = await resp.json()
    assert body["content"][0]["text"] == "fake reply to: hello fake"
    fake.set_default(text("fixed"))
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        assert (await resp.json())["content"][0]["text"] == "fixed"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")],
)
async def test_error_steps(api: Any, status: int, error_type: str) -> None:
    fake, http = api
    fake.add(error(status, retry_after=2, times=2))
    for _ in range(2):
        async with http.post("/v1/messages", json=REQUEST) as resp:
            assert resp.status == status
            assert resp.headers["retry-after"] == "2"
            assert (await resp.json())["error"]["type"] == error_type
    async with http.post("/v1/messages", json=REQUEST) as resp:
        assert resp.status == 200, "an error step answers only `times` requests"


async def test_match_picks_the_step_meant_for_a_request(api: Any) -> None:
    fake, http = api
    fake.add(text("for bob", match="bob"), text("for anyone"))
    bob = REQUEST | {"stream": False, "messages": [{"role": "user", "content": "bob here"}]}
    async with http.post("/v1/messages", json=bob) as resp:
        assert (await resp.json())["content"][0]["text"] == "for bob"
    async with http.post("/v1/messages", json=bob) as resp:
        assert (await resp.json())["content"][0]["text"] == "for anyone"
    assert fake.pending() == 0


async def test_dropped_stream_ends_without_message_stop(api: Any) -> None:
    fake, http = api
    fake.add(TextStep(text="x" * 100, stream=StreamShape(drop_after=3)))
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post("/v1/messages", json=REQUEST) as resp:
            async for line in resp.content:
                received.append(line)
    assert any(b"message_start" in line for line in received)
    assert not any(b"message_stop" in line for line in received)


async def test_slow_stream_paces_events(api: Any) -> None:
    import time

    fake, http = api
    fake.add(TextStep(text="abc", stream=StreamShape(event_delay=0.05)))
    start = time.monotonic()
    async with http.post("/v1/messages", json=REQUEST) as resp:
        events = await sse_events(resp)
    # message_start, block start, one delta, block stop, message_delta, message_stop
    assert len(events) == 6 and time.monotonic() - start >= 0.3


async def test_requests_are_recorded_without_credentials(api: Any) -> None:
    fake, http = api
    async with http.post("/v1/messages?beta=true", json=REQUEST) as resp:
        await resp.read()
    async with http.head("/api/hello") as resp:
        assert resp.status == 200
    async with http.post("/v1/messages/count_tokens", json=REQUEST) as resp:
        assert (await resp.json())["input_tokens"] > 0
    paths = [(r.method, r.path) for r in fake.requests]
    assert paths == [
        ("POST", "/v1/messages"),
        ("HEAD", "/api/hello"),
        ("POST", "/v1/messages/count_tokens"),
    ]
    assert fake.requests[0].query == {"beta": "true"}
    assert fake.message_bodies() == [REQUEST]
    assert "sk-secret-value-123" not in repr(fake.requests)


async def test_admin_endpoints_drive_a_fake_in_another_process(api: Any) -> None:
    fake, http = api
    async with http.post("/_fake/script", json=steps_json([text("scripted")])) as resp:
        assert (await resp.json()) == {"pending": 1}
    async with http.post(
        "/_fake/script", json={"default": {"kind": "text", "text": "new default"}}
    ) as resp:
        assert resp.status == 200
    async with http.post("/_fake/script", json={"steps": [{"kind": "nonsense"}]}) as resp:
        assert resp.status == 400
    for expected in ("scripted", "new default"):
        async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
            assert (await resp.json())["content"][0]["text"] == expected
    async with http.get("/_fake/requests", params={"path": "/v1/messages"}) as resp:
        records = await resp.json()
    assert [r["body"]["model"] for r in records] == ["claude-test", "claude-test"]
    async with http.post("/_fake/reset") as resp:
        assert resp.status == 200
    assert fake.requests == [] and fake.pending() == 0


async def test_malformed_bodies_get_400(api: Any) -> None:
    _, http = api
    async with http.post("/v1/messages", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_an_expected_key_is_required_and_recorded_without_its_value(api: Any) -> None:
    fake, http = api
    fake.expect_key("sk-the-real-one")
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "authentication_error"
    real = {"x-api-key": "sk-the-real-one"}
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}, headers=real) as resp:
        assert resp.status == 200
    assert [r.key_ok for r in fake.requests] == [False, True]
    assert "sk-the-real-one" not in json.dumps([r.headers for r in fake.requests])
    fake.reset()  # forgets the expectation too
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        assert resp.status == 200 and fake.requests[0].key_ok is None


async def test_cache_usage_is_reported_as_scripted(api: Any) -> None:
    fake, http = api
    usage = ReplyUsage(input_tokens=5, output_tokens=6, cache_read_input_tokens=7,
                       cache_creation_input_tokens=8, cache_creation_1h_input_tokens=3)  # fmt: skip
    fake.add(text("cached", usage=usage), text("cached", usage=usage))
    async with http.post("/v1/messages", json=REQUEST | {"stream": False}) as resp:
        plain = (await resp.json())["usage"]
    async with http.post("/v1/messages", json=REQUEST) as resp:
        start = (await sse_events(resp))[0][1]["message"]["usage"]
    # The writes by how long they are kept, as the API states them.
    by_ttl = {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 3}
    assert plain == {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 7,
                     "cache_creation_input_tokens": 8, "cache_creation": by_ttl}  # fmt: skip
    assert start["cache_read_input_tokens"] == 7 and start["cache_creation_input_tokens"] == 8
    assert start["cache_creation"] == by_ttl
    with pytest.raises(ValueError, match="part of cache_creation_input_tokens"):
        ReplyUsage(cache_creation_input_tokens=1, cache_creation_1h_input_tokens=2)
