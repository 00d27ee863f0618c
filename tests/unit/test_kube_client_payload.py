"""How the operator's Kubernetes client reads what comes back: answers and watch lines.

The API server itself is exercised by every integration test; these are the answers it does
not give (a proxy's error page, a body cut short, bytes that are not UTF-8), served by a
local HTTP server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from corral.kube.client import ApiError, Connection, KubeClient
from corral.testing.serving import route, serving

POD = {
    "kind": "Pod",
    "metadata": {"name": "s-0", "annotations": {"note": "café ☕ 𝄞"}, "resourceVersion": "7"},
    "spec": {"containers": [{"name": "runner", "args": ["a\\b", '"quoted"']}]},
    "status": {"phase": "Running", "podIP": "10.0.0.7", "ratio": 0.25, "big": 2**70},
}


def _answer(
    body: bytes, status: int = 200, content_type: str = "application/json"
) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type=content_type)

    return route(handler, "/{tail:.*}")


@asynccontextmanager
async def _client_of(app: web.Application) -> AsyncIterator[KubeClient]:
    """The operator's client, pointed at `app` served locally."""
    async with serving(app) as url:
        client = KubeClient(Connection(server=url, ssl_context=False, token=None))
        try:
            yield client
        finally:
            await client.close()


async def _request(app: web.Application) -> dict[str, object]:
    async with _client_of(app) as client:
        return await client.request("GET", "/api/v1/namespaces/d/pods/s-0")


async def test_an_answer_is_decoded_as_json_would_decode_it() -> None:
    body = json.dumps(POD, ensure_ascii=False).encode()
    assert await _request(_answer(body)) == json.loads(body) == POD
    assert await _request(_answer(json.dumps(POD).encode())) == POD  # \u escapes


async def test_an_empty_answer_is_an_empty_object() -> None:
    assert await _request(_answer(b"  \n")) == {}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", 502, "Bad Gateway"),
        (b'{"kind": "Pod", "metadata": ', 200, "InvalidResponse"),  # cut short
        (b'{"kind": "Pod"} trailing', 200, "InvalidResponse"),
        (b'["not", "an", "object"]', 200, "InvalidResponse"),
        (b'{"note": "\xff\xfe"}', 200, "InvalidResponse"),  # not UTF-8
    ],
)
async def test_an_answer_that_is_not_a_json_object_is_an_api_error_quoting_it(
    body: bytes, status: int, reason: str
) -> None:
    with pytest.raises(ApiError) as raised:
        await _request(_answer(body, status, "text/html" if status >= 400 else "application/json"))
    assert raised.value.status == 502
    assert raised.value.reason == reason
    assert "response is not JSON" in raised.value.message
    assert body[:12].decode(errors="replace") in raised.value.message


async def test_watch_lines_are_decoded_one_event_each_and_a_broken_line_is_an_error() -> None:
    events = [{"type": "ADDED", "object": POD}, {"type": "MODIFIED", "object": {**POD, "n": 1}}]
    lines = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(lines + b"\n" + b'{"type": "MODIFIED", "object": {\n')
        return response

    seen = []
    async with _client_of(route(watch, "/{tail:.*}")) as client:
        with pytest.raises(ValueError):
            async for event in client.stream("/api/v1/pods", {"watch": "1"}):
                seen.append(event)
    assert seen == events


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/merge-patch+json", "application/json-patch+json"],
)
async def test_a_request_body_arrives_as_json_with_its_content_type(content_type: str) -> None:
    received: list[tuple[str, object]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append((request.content_type, json.loads(await request.read())))
        return web.json_response({"kind": "Status"})

    async with _client_of(route(handler, "/{tail:.*}")) as client:
        await client.request("PATCH", "/api/v1/pods/s-0", POD, content_type=content_type)
    assert received == [(content_type, POD)]
