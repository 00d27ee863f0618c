"""Forwarding to a runner: plain HTTP, SSE passed through chunk by chunk, WebSocket both ways.

Nothing is buffered beyond one chunk: each piece the runner writes is written to the
client as it arrives, and a slow client slows the runner's stream (TCP backpressure)
rather than growing the gateway's memory. A client that goes away closes the upstream
request, which the runner treats as it treats any disconnected client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from corral.api import runtime
from corral.stalled_reader import ReaderStalled, send_or_cut, stall_bounded_socket

log = logging.getLogger("corral.gateway.proxy")

# Request headers passed to the runner; everything else (Authorization, cookies, the
# caller's token, hop-by-hop headers) stays at the gateway.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "Last-Event-ID", "User-Agent")
# Response headers passed back; the gateway sets its own framing headers.
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Retry-After")
# How long, and how often, a refused connection to a runner is tried again.
CONNECT_RETRY_SECONDS = 5.0
CONNECT_RETRY_FIRST_SECONDS = 0.05
CONNECT_RETRY_MAX_SECONDS = 0.2

# A held request's readiness probe of a starting runner: the runner answers the moment
# its agents are up, or after this long (`/readyz?wait=`, as the kubelet's first probe).
READY_PROBE_HOLD_SECONDS = 1.0
READY_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=READY_PROBE_HOLD_SECONDS + 1.0)

T = TypeVar("T")


class StreamingClient:
    """One aiohttp client session for a proxy's upstream calls, made on first use (inside
    the running loop): no total timeout (streams last as long as they last), no pool
    limit, bodies passed through as they came (no decompression). `untrusted_upstream`:
    the servers it calls run code Corral does not trust (runners), so a connection to
    one that stops reading what is sent to it is dropped rather than held
    (corral.stalled_reader)."""

    def __init__(self, connect_timeout: float, *, untrusted_upstream: bool = False) -> None:
        self.connect_timeout = connect_timeout
        self.untrusted_upstream = untrusted_upstream
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(
                    limit=0,
                    socket_factory=stall_bounded_socket if self.untrusted_upstream else None,
                ),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def connect_retrying(connect: Callable[[], Awaitable[T]], within: float) -> T:
    """`connect()`, tried again while the connection itself fails, for up to `within` s.

    A pod that has just turned Ready can refuse its first connections for a moment: on the
    real node the network policy agent (kube-router, which rejects what no policy allows
    yet) let the gateway in to a new pod 0.1 to 0.4 s after its Ready, while the kubelet's
    probes, from the node, passed. Nothing was sent on a connection never made, so a
    request of any method can be tried again."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    delay = CONNECT_RETRY_FIRST_SECONDS
    refused = 0
    while True:
        try:
            connected = await connect()
        except aiohttp.ClientConnectorError as error:
            if loop.time() + delay > give_up:
                raise
            if not refused:
                log.info(
                    "connection to a runner refused; trying again",
                    extra={"fields": {"error": str(error.os_error), "within_s": within}},
                )
            refused += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_SECONDS)
        else:
            if refused:
                log.info(
                    "connected to the runner after refusals",
                    extra={"fields": {"refusals": refused}},
                )
            return connected


class UpstreamError(Exception):
    """The runner could not be reached or broke off (502)."""


def upstream_headers(request_headers: Mapping[str, str], credential: str) -> dict[str, str]:
    headers = {k: request_headers[k] for k in FORWARDED_REQUEST_HEADERS if k in request_headers}
    headers[runtime.GATEWAY_CREDENTIAL_HEADER] = credential
    # The runner's body must reach the client as written: no compression it did not ask for.
    headers["Accept-Encoding"] = "identity"
    return headers


async def forward_http(
    client: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    body: bytes | None,
    credential: str,
    response: web.StreamResponse | None = None,
    connect_retry_seconds: float = CONNECT_RETRY_SECONDS,
    silence_seconds: float | None = None,
) -> web.StreamResponse:
    """Send the request to `url` and stream the answer back.

    A connection refused is tried again for up to `connect_retry_seconds` (see
    connect_retrying).

    With `response` already prepared (an SSE stream opened while the session woke), the
    runner's status can no longer be sent: a non-200 answer becomes an SSE `error` event.

    `silence_seconds`: for a stream, whose runner sends a keepalive every 15 s, how long
    without a byte means the runner (or its node) is gone; a dead node sends no reset."""
    headers = upstream_headers(request.headers, credential)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=client.timeout.sock_connect, sock_read=silence_seconds
    )
    try:
        upstream = await connect_retrying(
            lambda: client.request(
                request.method,
                url,
                params=request.query,
                data=body,
                headers=headers,
                allow_redirects=False,
                auto_decompress=False,
                timeout=timeout,
            ),
            connect_retry_seconds,
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        # The cause (addresses, errno) is for the gateway's log, not for the client.
        raise UpstreamError(f"runner unreachable: {type(error).__name__}") from error
    async with upstream:
        if response is not None and response.prepared:
            if upstream.status != 200:
                detail = (await upstream.read())[:4096].decode("utf-8", "replace")
                event = json.dumps({"type": "error", "status": upstream.status, "message": detail})
                await send_or_cut(request, response.write(f"data: {event}\n\n".encode()))
                return response
        else:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name in FORWARDED_RESPONSE_HEADERS:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
                response.headers["X-Accel-Buffering"] = "no"
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await send_or_cut(request, response.write(chunk))
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as error:
            raise UpstreamError("runner broke off the response") from error
        except TimeoutError as error:  # sock_read: nothing, not even a keepalive
            raise UpstreamError(f"runner sent nothing for {silence_seconds:g} s") from error
    return response


async def pump_websocket(
    request: web.BaseRequest,
    client_ws: web.WebSocketResponse,
    upstream_ws: aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy frames both ways until either side closes, then close the other with the same
    code (an error, e.g. a frame over the size limit, as 1011 or its own code). A client
    (of `request`) that stops reading is cut off (corral.stalled_reader); so is a runner,
    by its socket when `upstream_ws` came from an untrusted-upstream StreamingClient."""

    async def copy(source: Any, sink: Any, reader: web.BaseRequest | None) -> int:
        """`reader`: the request whose client `sink` sends to, cut off if it stalls."""
        failed = False
        async for msg in source:
            if msg.type == WSMsgType.TEXT:
                sending = sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                sending = sink.send_bytes(msg.data)
            else:  # an error (a closing frame ends the loop)
                failed = msg.type == WSMsgType.ERROR
                break
            await (sending if reader is None else send_or_cut(reader, sending))
        return passed_on_code(source.close_code, failed)

    to_upstream = asyncio.create_task(copy(client_ws, upstream_ws, None))
    to_client = asyncio.create_task(copy(upstream_ws, client_ws, request))
    tasks = [to_upstream, to_client]
    codes: dict[asyncio.Task[int], int] = {to_upstream: WSCloseCode.OK, to_client: WSCloseCode.OK}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is None:
                codes[task] = task.result()
            else:
                codes[task] = WSCloseCode.INTERNAL_ERROR
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, aiohttp.ClientError):
                await task
        await upstream_ws.close(code=codes[to_upstream])
        await client_ws.close(code=codes[to_client])
    stalled = None if to_client.cancelled() else to_client.exception()
    if isinstance(stalled, ReaderStalled):
        raise stalled  # for the caller's log and metrics


def passed_on_code(code: int | None, failed: bool) -> int:
    """The close code to send the other side: the closing side's own when it may be sent,
    1011 for a side that failed or vanished (1005/1006 are never sent)."""
    if code is None or code in (1005, 1006):
        return WSCloseCode.INTERNAL_ERROR if failed or code == 1006 else WSCloseCode.OK
    if failed and code == WSCloseCode.OK:
        return WSCloseCode.INTERNAL_ERROR
    return code


async def runner_ready(client: aiohttp.ClientSession, base_url: str) -> bool:
    """Whether the runner at `base_url` is ready, by its own /readyz (open to the gateway
    as to the kubelet), held while it starts: a woken runner is used the moment it is
    ready, not at the next of repeated asks."""
    url = f"{base_url}{runtime.READINESS_PATH}?wait={READY_PROBE_HOLD_SECONDS:g}"
    try:
        async with client.get(url, timeout=READY_PROBE_TIMEOUT) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
