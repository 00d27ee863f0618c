"""The gateway's HTTP server: route, authenticate, authorize, limit, hold, forward, log.

Order matters: a request is authenticated and authorized before the gateway says whether
the session exists (so names are not disclosed to callers who may not see them), and
nothing of a refused request reaches a runner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from corral.api.tokens import runner_credential
from corral.gateway import routes
from corral.gateway.auth import Forbidden, Reviewer, Unauthenticated, User
from corral.gateway.directory import (
    Directory,
    Endpoint,
    NotReady,
    SessionFinished,
    SessionGone,
    SessionSuspended,
    SessionView,
    WakeFailed,
)
from corral.gateway.limits import Limited, UserLimits
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.proxy import (
    CONNECT_RETRY_SECONDS,
    StreamingClient,
    UpstreamError,
    connect_retrying,
    forward_http,
    pump_websocket,
    runner_ready,
    upstream_headers,
)
from corral.stalled_reader import ReaderStalled, send_or_cut

log = logging.getLogger("corral.gateway")
# Through the API server's service proxy the caller's Authorization header is consumed by
# the API server; the caller's own token travels in this header instead.
TOKEN_HEADER = "X-Corral-Token"
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024  # the runner's own limit (docs/runner.md)
BODY_READ_SECONDS = 30.0
WAKING_COMMENT = b": waking\n\n"
# A runner's stream sends a keepalive every 15 s: this long without a byte, it is gone
# (its node died: no reset comes), and the stream's task, sockets and slot are freed.
STREAM_SILENCE_SECONDS = 60.0
# Largest WebSocket frame taken from a runner (its events carry what the agent writes).
RUNNER_FRAME_MAX_BYTES = 16 * 1024 * 1024
# Status logged (never sent) for a request whose caller went away (nginx's convention).
CLIENT_GONE = 499


@dataclass
class GatewaySettings:
    hold_seconds: float = 60.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    rate_per_second: float = 20.0
    burst: int = 40
    max_streams_per_user: int = 32


class GatewayError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.extra = extra

    def response(self) -> web.Response:
        response = web.json_response(
            {"error": str(self), "status": self.status, **self.extra}, status=self.status
        )
        if self.retry_after is not None:
            response.headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="corral"'
        return response


def bearer_token(headers: Any) -> str | None:
    explicit = headers.get(TOKEN_HEADER)
    if explicit:
        return str(explicit).removeprefix("Bearer ").strip() or None
    authorization = str(headers.get("Authorization", ""))
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def sse_error(status: int, message: str) -> bytes:
    event = {"type": "error", "status": status, "message": message}
    return f"data: {json.dumps(event)}\n\n".encode()


def wants_stream(route: routes.Route, body: bytes | None) -> bool:
    """Whether the runner will answer with SSE (so a hold can send `: waking` lines)."""
    if route.runner_path == "/v1/conversation":
        return True
    if route.runner_path != "/v1/messages":
        return False
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return False  # the runner answers 400 itself
    return not (isinstance(parsed, dict) and parsed.get("stream") is False)


def app_runner(app: web.Application, idle_seconds: float) -> web.AppRunner:
    """A runner for one of the gateway's listeners. A connection with no request in progress
    is closed after `idle_seconds`: a client that connects and sends nothing, or dribbles a
    request's head a byte at a time, holds a socket that long and no longer. A request being
    answered (an open SSE stream, a WebSocket, a held wake) is not idle. (aiohttp's own
    default is an hour.)"""
    return web.AppRunner(app, access_log=None, keepalive_timeout=idle_seconds)


class Gateway:
    def __init__(
        self,
        reviewer: Reviewer,
        directory: Directory,
        key: bytes,
        metrics: GatewayMetrics,
        settings: GatewaySettings | None = None,
    ) -> None:
        self.reviewer = reviewer
        self.directory = directory
        self.key = key
        self.metrics = metrics
        self.settings = settings or GatewaySettings()
        self.limits = UserLimits(
            self.settings.rate_per_second,
            self.settings.burst,
            self.settings.max_streams_per_user,
        )
        self._client = StreamingClient(connect_timeout=5, untrusted_upstream=True)

    async def client(self) -> aiohttp.ClientSession:
        return self._client.get()

    async def close(self) -> None:
        await self._client.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(lambda _: self.close())
        return app

    def credential(self, session: SessionView) -> str:
        return runner_credential(self.key, session.namespace, session.name, session.uid)

    # --- one request ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        route: routes.Route | None = None
        user: User | None = None
        try:
            route = routes.parse(request.method, request.path)
            user = await self.reviewer.authenticate(bearer_token(request.headers))
            # Before the access review: a user's refused requests count against its rate too.
            self.limits.take(user.name)
            await self.reviewer.authorize(user, route.endpoint.verb, route.namespace, route.name)
            response = await self._serve(request, route, user)
        except asyncio.CancelledError:
            self._log(request, route, user, CLIENT_GONE, started)
            raise
        except Exception as error:  # every failure answers JSON with its status
            if isinstance(error, ReaderStalled):
                self.metrics.stalled_readers.inc()
            if client_gone(request):  # nobody to answer; not the gateway's error
                self._log(request, route, user, CLIENT_GONE, started)
                return web.Response(status=CLIENT_GONE)
            response = self._error_response(error)
        self._log(request, route, user, response.status, started)
        return response

    def _error_response(self, error: Exception) -> web.Response:
        mapped = _as_gateway_error(error)
        if mapped.status == 429:
            self.metrics.limited.labels(limit=str(mapped.extra.get("limit", ""))).inc()
        if mapped.status in (500, 502):
            self.metrics.upstream_errors.labels(reason=type(error).__name__).inc()
            if mapped.status == 500:
                log.exception("gateway error", exc_info=error)
        return mapped.response()

    def _log(
        self,
        request: web.Request,
        route: routes.Route | None,
        user: User | None,
        status: int,
        started: float,
    ) -> None:
        label = route.runner_path if route else "invalid"
        self.metrics.requests.labels(route=label, code=str(status)).inc()
        # One line per request; never a body, a token or a header value.
        log.info(
            "request",
            extra={
                "session_namespace": route.namespace if route else None,
                "session_name": route.name if route else None,
                "fields": {
                    "user": user.name if user else None,
                    "method": request.method,
                    "route": label,
                    "status": status,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            },
        )

    async def _serve(
        self, request: web.Request, route: routes.Route, user: User
    ) -> web.StreamResponse:
        body = await self._read_body(request) if request.method == "POST" else None
        session = self.directory.view(route.namespace, route.name)
        self.directory.check_reachable(session)
        stream = route.endpoint.websocket or wants_stream(route, body)
        # A request held for a wake takes a stream slot too: it holds its body and a socket
        # for up to the hold limit, and a user's slots bound how many it can hold at once.
        slot = stream or session.ready_endpoint() is None
        if slot:
            self.limits.open_stream(user.name)
            self.metrics.open_streams.inc()
        try:
            if route.endpoint.websocket:
                return await self._websocket(request, route, session, user)
            return await self._http(request, route, session, user, body, stream)
        finally:
            if slot:
                self.limits.close_stream(user.name)
                self.metrics.open_streams.dec()

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise GatewayError(413, f"request body over {limit} bytes")
        try:
            return await asyncio.wait_for(request.read(), BODY_READ_SECONDS)
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(413, f"request body over {limit} bytes") from None
        except TimeoutError:
            raise GatewayError(
                408, f"request body not received within {BODY_READ_SECONDS:g} s"
            ) from None

    async def _endpoint_url(
        self,
        route: routes.Route,
        session: SessionView,
        user: User,
        on_wait: Any = None,
    ) -> tuple[str, SessionView]:
        """The runner URL of the session's ready pod, waking and holding as needed."""
        endpoint = session.ready_endpoint()
        if endpoint is None:
            started = time.monotonic()
            if self.directory.needs_wake(session) and await self.directory.wake(session, user.name):
                self.metrics.wakes.inc()
            try:
                endpoint = await self.directory.ready_endpoint(
                    route.namespace,
                    route.name,
                    self.settings.hold_seconds,
                    on_wait,
                    probe=self._runner_ready,
                )
            finally:
                self.metrics.hold_seconds.observe(time.monotonic() - started)
            session = self.directory.view(route.namespace, route.name)
        return endpoint.base_url + route.runner_path, session

    async def _runner_ready(self, endpoint: Endpoint) -> bool:
        return await runner_ready(await self.client(), endpoint.base_url)

    async def _http(
        self,
        request: web.Request,
        route: routes.Route,
        session: SessionView,
        user: User,
        body: bytes | None,
        stream: bool,
    ) -> web.StreamResponse:
        early: web.StreamResponse | None = None
        if stream and session.ready_endpoint() is None:
            # Hold with the stream already open, so the client sees that we are waking.
            early = web.StreamResponse(status=200)
            early.headers["Content-Type"] = "text/event-stream"
            early.headers["Cache-Control"] = "no-cache"
            early.headers["X-Accel-Buffering"] = "no"

            async def ping() -> None:
                assert early is not None
                if not early.prepared:
                    await early.prepare(request)
                await send_or_cut(request, early.write(WAKING_COMMENT))

            try:
                url, session = await self._endpoint_url(route, session, user, ping)
            except Exception as error:
                if not early.prepared:
                    raise
                mapped = _as_gateway_error(error)
                await send_or_cut(request, early.write(sse_error(mapped.status, str(mapped))))
                await early.write_eof()
                return early
        else:
            url, session = await self._endpoint_url(route, session, user)
        if client_gone(request):
            # It left while the session woke: what it asked must not reach the agent (a
            # client that retries would send its message twice).
            raise ClientGone()
        try:
            response = await forward_http(
                await self.client(),
                request,
                url,
                body,
                self.credential(session),
                early,
                silence_seconds=STREAM_SILENCE_SECONDS if stream else None,
            )
        except UpstreamError as error:
            if early is None or not early.prepared:
                raise
            # The stream is open (status 200 sent): the request's log line cannot say it.
            log.warning(
                "runner failed a held request",
                extra={
                    "session_namespace": route.namespace,
                    "session_name": route.name,
                    "fields": {"error": str(error), "cause": repr(error.__cause__), "url": url},
                },
            )
            self.metrics.upstream_errors.labels(reason=type(error).__name__).inc()
            await send_or_cut(request, early.write(sse_error(502, str(error))))
            response = early
        if response.prepared:
            await response.write_eof()
        return response

    async def _websocket(
        self, request: web.Request, route: routes.Route, session: SessionView, user: User
    ) -> web.StreamResponse:
        client_ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_request_bytes, heartbeat=30
        )
        await client_ws.prepare(request)

        async def waking() -> None:
            await send_or_cut(request, client_ws.send_json({"type": "waking"}))

        try:
            url, session = await self._endpoint_url(route, session, user, waking)
            client = await self.client()
            headers = upstream_headers(request.headers, self.credential(session))
            upstream = await connect_retrying(
                lambda: client.ws_connect(
                    url,
                    headers=headers,
                    # What the runner sends: events as large as the agent's (a file it
                    # writes), not bounded like the caller's requests.
                    max_msg_size=RUNNER_FRAME_MAX_BYTES,
                    heartbeat=30,
                ),
                CONNECT_RETRY_SECONDS,
            )
        except Exception as error:
            mapped = _as_gateway_error(error)
            await client_ws.send_json(
                {"type": "error", "status": mapped.status, "message": str(mapped)}
            )
            await client_ws.close()
            return client_ws
        await pump_websocket(request, client_ws, upstream)
        return client_ws


class ClientGone(Exception):
    """The caller closed its connection: nothing more is done for it."""


def client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _as_gateway_error(error: Exception) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, routes.RouteError):
        return GatewayError(error.status, str(error))
    if isinstance(error, Unauthenticated):
        return GatewayError(401, str(error))
    if isinstance(error, Forbidden):
        return GatewayError(403, str(error))
    if isinstance(error, Limited):
        return GatewayError(429, str(error), retry_after=error.retry_after, limit=error.limit)
    if isinstance(error, SessionGone):
        return GatewayError(404, str(error))
    if isinstance(error, SessionFinished):
        return GatewayError(410, str(error), phase=error.phase, result=error.result)
    if isinstance(error, SessionSuspended):
        return GatewayError(409, str(error))
    if isinstance(error, NotReady | WakeFailed):
        return GatewayError(503, str(error), retry_after=5)
    if isinstance(error, UpstreamError):
        return GatewayError(502, str(error))
    return GatewayError(500, "internal gateway error")
