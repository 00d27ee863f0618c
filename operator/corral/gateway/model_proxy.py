"""The model proxy: session pods call the Messages API here with a credential of their own;
the gateway checks it, swaps in the real key and forwards to the upstream, streaming.

A caller is the session whose credential (corral.api.tokens.model_credential) it presents
AND one of whose live pods has the caller's address: a credential copied out of its pod
is worthless elsewhere. Then budgets and per-minute limits; only then does anything reach
the upstream. Answers pass through untouched (status, `anthropic-*`, `retry-after`, the
SSE events one by one); the usage they report is metered on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from corral.api.tokens import MODEL_CREDENTIAL_PREFIX, model_credential
from corral.config import ModelProxyConfig
from corral.gateway import budgets
from corral.gateway.directory import Directory, SessionView
from corral.gateway.metering import Meter, ModelMetrics
from corral.gateway.model_keys import KeyUnavailable, ModelKeys
from corral.gateway.pricing import PriceTable
from corral.gateway.proxy import StreamingClient
from corral.gateway.spend import NamespaceSpend
from corral.gateway.usage import MAX_JSON_BYTES, ResponseUsage, SseUsageReader, usage_of_json
from corral.kube.client import KubeClient
from corral.stalled_reader import send_or_cut

log = logging.getLogger("corral.gateway.model")
# Paths of the Messages API the Claude Code CLI uses; anything else is 404 here.
PATHS = {
    "/v1/messages": "POST",
    "/v1/messages/count_tokens": "POST",
    "/v1/models": "GET",
}
MODELS_PREFIX = "/v1/models/"
# Never forwarded upstream: the caller's credential, hop-by-hop and framing headers.
DROPPED_REQUEST_HEADERS = frozenset(
    {
        "host", "x-api-key", "authorization", "proxy-authorization", "cookie", "connection",
        "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length",
        "accept-encoding", "expect", "forwarded", "x-forwarded-for", "x-forwarded-host",
        "x-forwarded-proto", "x-real-ip",
    }
)  # fmt: skip
DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "set-cookie", "server",
     "date", "proxy-authenticate", "trailer", "upgrade"}
)  # fmt: skip


@dataclass
class ModelProxySettings:
    upstream_url: str
    namespace_budgets_usd: Mapping[str, float]
    max_request_bytes: int = 32 * 1024 * 1024


def error_body(error_type: str, message: str) -> dict[str, object]:
    """The Messages API's own error shape, which the CLI shows to the user."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_response(
    status: int, error_type: str, message: str, retry_after: int | None = None
) -> web.Response:
    response = web.json_response(error_body(error_type, message), status=status)
    if retry_after is not None:
        response.headers["retry-after"] = str(retry_after)
    return response


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """`x-api-key` (ANTHROPIC_API_KEY) or a bearer token (ANTHROPIC_AUTH_TOKEN)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = str(headers.get("authorization", "")).partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def normal_ip(address: str | None) -> str:
    """The caller's address as pod status writes it (IPv4-mapped IPv6 unwrapped)."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def authenticate(
    directory: Directory, key: bytes, credential: str | None, address: str
) -> SessionView | None:
    """The session that `credential` belongs to, if it calls from one of its pods."""
    if not credential or not credential.startswith(MODEL_CREDENTIAL_PREFIX) or not address:
        return None
    for session in directory.sessions_at(address):
        expected = model_credential(key, session.namespace, session.name, session.uid)
        if hmac.compare_digest(expected.encode(), credential.encode()):
            return session
    return None


def upstream_request_headers(headers: Mapping[str, str], api_key: str) -> dict[str, str]:
    forwarded = {k: v for k, v in headers.items() if k.lower() not in DROPPED_REQUEST_HEADERS}
    forwarded["x-api-key"] = api_key
    # Metering reads the body: it must arrive as the API wrote it, uncompressed.
    forwarded["accept-encoding"] = "identity"
    return forwarded


def allowed(method: str, path: str) -> bool:
    if PATHS.get(path) == method:
        return True
    return method == "GET" and path.startswith(MODELS_PREFIX) and "/" not in path[11:]


class ModelProxy:
    def __init__(
        self,
        directory: Directory,
        key: bytes,
        meter: Meter,
        limits: budgets.SessionLimits,
        settings: ModelProxySettings,
        keys: ModelKeys,
    ) -> None:
        self.directory = directory
        self.key = key
        self.keys = keys
        self.meter = meter
        self.limits = limits
        self.settings = settings
        self.upstream = settings.upstream_url.rstrip("/")
        self._client = StreamingClient(connect_timeout=10)
        self._in_flight: dict[str, int] = {}  # calls per session uid, bodies being read too

    async def client(self) -> aiohttp.ClientSession:
        return self._client.get()

    async def close(self) -> None:
        await self._client.close()

    def app(self) -> web.Application:
        # Bodies are read by the handler, with the limit checked there (an API error shape).
        app = web.Application(client_max_size=self.settings.max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(lambda _: self.close())
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        session: SessionView | None = None
        status = 500
        response: web.StreamResponse
        try:
            session = authenticate(
                self.directory,
                self.key,
                presented_credential(request.headers),
                normal_ip(request.remote),
            )
            if session is None:
                response = self._refuse(
                    401, "authentication_error", "invalid x-api-key", "Unauthenticated"
                )
            elif not allowed(request.method, request.path):
                response = self._refuse(
                    404, "not_found_error", f"the model proxy has no {request.method} "
                    f"{request.path[:200]}", "NotFound",
                )  # fmt: skip
            else:
                response = await self._admit_and_forward(request, session)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self.meter.metrics.requests.labels(str(status)).inc()
            log.info(
                "model call",
                extra={
                    "session_namespace": session.namespace if session else None,
                    "session_name": session.name if session else None,
                    "fields": {
                        "method": request.method,
                        "route": request.path if allowed(request.method, request.path)
                        else "other",
                        "status": status,
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                    },
                },
            )  # fmt: skip

    def _refuse(
        self,
        status: int,
        error_type: str,
        message: str,
        reason: str,
        retry_after: int | None = None,
    ) -> web.Response:
        self.meter.metrics.refused.labels(reason).inc()
        return error_response(status, error_type, message, retry_after)

    def refusal(self, session: SessionView, spends: bool = True) -> budgets.Denial | None:
        """Why `session` may not call the model now (budgets of a call that `spends`,
        then rates), if it may not. Decided before the request body is read."""
        if spends:
            refused = budgets.session_budget(
                session.max_budget_usd, self.meter.session_spent(session)
            ) or budgets.namespace_budget(
                session.namespace,
                self.settings.namespace_budgets_usd.get(session.namespace),
                self.meter.namespace_spent(session.namespace),
            )
            if refused is not None:
                self.meter.note_budget(session, refused.reason, refused.message)
                return refused
        return budgets.too_many_in_flight(self._in_flight.get(session.uid, 0)) or self.limits.take(
            f"{session.namespace}/{session.name}/{session.uid}"
        )

    def in_flight_refusal(self, session: SessionView) -> budgets.Denial | None:
        """Whether the calls already in flight could spend what is left of a budget."""
        namespace = session.namespace
        return budgets.in_flight_budget(
            "this session",
            session.max_budget_usd,
            self.meter.session_spent(session),
            self.meter.session_reserved(session),
            "SessionBudgetInFlight",
        ) or budgets.in_flight_budget(
            f"namespace {namespace}",
            self.settings.namespace_budgets_usd.get(namespace),
            self.meter.namespace_spent(namespace),
            self.meter.namespace_reserved(namespace),
            "NamespaceBudgetInFlight",
        )

    def _refuse_with(self, denial: budgets.Denial) -> web.Response:
        return self._refuse(
            denial.status, denial.error_type, denial.message, denial.reason, denial.retry_after
        )

    async def _admit_and_forward(
        self, request: web.Request, session: SessionView
    ) -> web.StreamResponse:
        spends = request.path == "/v1/messages"
        refused = self.refusal(session, spends)
        if refused is not None:
            return self._refuse_with(refused)
        self._in_flight[session.uid] = self._in_flight.get(session.uid, 0) + 1
        try:
            body = await self._read_body(request)
            if body is None:
                limit = self.settings.max_request_bytes
                return self._refuse(
                    413, "request_too_large", f"request body over {limit} bytes", "TooLarge"
                )
            if not spends:
                return await self._forward(request, session, body)
            refused = self.in_flight_refusal(session)
            if refused is not None:
                return self._refuse_with(refused)
            reserve = self.meter.prices.call_reserve(body) + self.meter.prompt_estimate(session)
            self.meter.hold(session, reserve)
            try:
                return await self._forward(request, session, body)
            finally:
                self.meter.release(session, reserve)
        finally:
            left = self._in_flight.pop(session.uid, 1) - 1
            if left > 0:
                self._in_flight[session.uid] = left

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The request body; None when it is over the limit."""
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return None

    async def _forward(
        self, request: web.Request, session: SessionView, body: bytes
    ) -> web.StreamResponse:
        url = self.upstream + request.path
        if request.query_string:
            url += "?" + request.query_string
        try:
            api_key = await self.keys.key_for(session.namespace)
        except KeyUnavailable as error:
            # 402 as for budgets: the CLI ends the turn showing this message (a 401 makes
            # it wait for a login instead).
            return self._refuse(
                402, "billing_error",
                f"corral gateway: no model key for namespace {session.namespace}: {error}",
                "NamespaceKeyUnavailable",
            )  # fmt: skip
        client = await self.client()
        try:
            upstream = await client.request(
                request.method,
                url,
                data=body if request.method == "POST" else None,
                headers=upstream_request_headers(request.headers, api_key),
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            self.meter.metrics.refused.labels("UpstreamUnreachable").inc()
            return error_response(
                502,
                "api_error",
                f"corral gateway: model upstream unreachable ({type(error).__name__})",
            )
        metered = request.path == "/v1/messages" and upstream.status == 200
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in DROPPED_RESPONSE_HEADERS:
                    response.headers.add(name, value)
            streaming = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            if upstream.content_length is not None and not streaming:
                response.content_length = upstream.content_length
            await response.prepare(request)
            reader = SseUsageReader() if metered and streaming else None
            whole = bytearray() if metered and not streaming else None
            client_gone = False
            try:
                async for chunk in upstream.content.iter_any():
                    # Counted before it is passed on: a write that fails loses no usage.
                    if reader is not None:
                        reader.feed(chunk)
                    elif whole is not None and len(whole) <= MAX_JSON_BYTES:
                        whole += chunk
                    if not client_gone:
                        try:
                            await send_or_cut(request, response.write(chunk))
                        except ConnectionError:
                            client_gone = True
                    if client_gone and whole is None:
                        # A stream ends here (the upstream stops generating when we hang
                        # up); its output is estimated from what it sent (usage.py). A
                        # whole reply is read on: it is made already, and states its usage.
                        break
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                self.meter.metrics.refused.labels("UpstreamBrokeOff").inc()
            finally:
                # Whatever was used is counted, also when the client went away mid-stream.
                if reader is not None:
                    self._meter(session, reader.final())
                elif whole is not None:
                    self._meter(session, usage_of_json(bytes(whole)))
            if not client_gone:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
        return response

    def _meter(self, session: SessionView, result: ResponseUsage) -> None:
        if not result.seen:
            return
        self.meter.record(session, result.model, result.usage)
        self.limits.used(f"{session.namespace}/{session.name}/{session.uid}", result.usage.total)


def read_api_key(path: Path) -> str:
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"model key file {path} is empty: put the Anthropic API key in it")
    return key


def build_model_proxy(
    config: ModelProxyConfig,
    directory: Directory,
    key: bytes,
    kube: KubeClient,
    registry: CollectorRegistry,
    key_file: Path | None = None,
    namespace: str = "corral-system",
) -> tuple[ModelProxy, Meter]:
    """The model proxy as `config` describes it (and its meter, whose `run` writes status)."""
    path = key_file or (Path(config.key_file) if config.key_file else None)
    if path is None:
        raise ValueError(
            "the model proxy needs the real key: modelProxy.keyFile or --model-key-file"
        )
    meter = Meter(
        PriceTable(config.prices, config.web_search_usd_per_1000),
        ModelMetrics(registry),
        directory,
        kube,
        config.status_interval_seconds,
        NamespaceSpend(
            kube,
            namespace,
            config.spend_config_map,
            read_always=bool(config.namespace_budgets_usd),
        )
        if config.spend_config_map
        else None,
    )
    proxy = ModelProxy(
        directory,
        key,
        meter,
        budgets.SessionLimits(config.requests_per_minute, config.tokens_per_minute),
        ModelProxySettings(
            upstream_url=config.upstream_url,
            namespace_budgets_usd=dict(config.namespace_budgets_usd),
            max_request_bytes=config.max_request_bytes,
        ),
        ModelKeys(read_api_key(path), config.namespace_keys, kube, config.key_refresh_seconds),
    )
    return proxy, meter
