"""The egress proxy: an HTTP forward proxy for session pods, on a listener of its own.

A connection is identified by its source address (the session pod's IP, from the
gateway's informers; see egress_index). Its request is parsed and bounded, checked against
the session's policy, the name resolved here and each address checked (DNS rebinding), and
only then is an upstream connection opened, to the address that was checked: nothing of a
refused request leaves the gateway. CONNECT becomes a byte tunnel (both directions,
backpressure through drain(), closed after `idle_seconds` without a byte either way);
plain HTTP in absolute form is rewritten to origin form and then spliced the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from corral.gateway.egress_http import MAX_HEAD_BYTES, BadRequest, ProxyRequest, parse_head
from corral.gateway.egress_http import response_head as answer
from corral.gateway.egress_index import Caller, EgressIndex
from corral.gateway.egress_policy import IPAddress
from corral.gateway.egress_report import RefusalReporter

log = logging.getLogger("corral.gateway.egress")
BUFFER = 256 * 1024
UNKNOWN_CLIENT = "unknown-client"


@dataclass
class EgressSettings:
    idle_seconds: float = 300.0
    connect_seconds: float = 10.0
    head_seconds: float = 10.0
    max_tunnels: int = 8192
    max_tunnels_per_session: int = 512


class EgressMetrics:
    """Labels: fixed sets only (kind, result, reason, direction); never a host or a session."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "corral_gateway_egress_requests_total",
            "Egress proxy requests, by kind (connect, http) and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.refused = Counter(
            "corral_gateway_egress_refused_total",
            "Egress proxy requests refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.open_tunnels = Gauge(
            "corral_gateway_egress_open_tunnels",
            "Upstream connections open through the egress proxy now.",
            registry=registry,
        )
        self.bytes = Counter(
            "corral_gateway_egress_bytes_total",
            "Bytes carried by the egress proxy, by direction (up: to the internet).",
            ["direction"],
            registry=registry,
        )


@dataclass
class Resolver:
    """Names to addresses, once per request. `static` (tests, pinned names) comes first;
    everything else goes to the system resolver (the pod's: cluster DNS)."""

    static: Mapping[str, Sequence[str]] = field(default_factory=dict)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        pinned = self.static.get(host)
        if pinned is not None:
            return [ipaddress.ip_address(a) for a in pinned]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        seen: dict[IPAddress, None] = {}
        for _family, _type, _proto, _name, sockaddr in infos:
            seen[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
        return list(seen)


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


_REASONS = {400: "Bad Request", 403: "Forbidden", 429: "Too Many Requests", 502: "Bad Gateway"}
_REASONS[504] = "Gateway Timeout"


def client_address(peer: object) -> str:
    """The caller's address as the pod index keys it (IPv4-mapped IPv6 unwrapped)."""
    host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class EgressProxy:
    def __init__(
        self,
        index: EgressIndex,
        metrics: EgressMetrics,
        reporter: RefusalReporter,
        resolver: Resolver | None = None,
        settings: EgressSettings | None = None,
    ) -> None:
        self.index = index
        self.metrics = metrics
        self.reporter = reporter
        self.resolver = resolver or Resolver()
        self.settings = settings or EgressSettings()
        self._open = 0
        self._open_by_session: dict[str, int] = {}

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD_BYTES + 1024)

    # --- one connection ------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        source = client_address(writer.get_extra_info("peername"))
        request: ProxyRequest | None = None
        caller: Caller | None = None
        try:
            head = await self._read_head(reader)
            if head is None:
                return
            request = parse_head(head)
            caller = self.index.caller(source)
            if caller is None:
                raise Refused(403, UNKNOWN_CLIENT, "this address is not a session pod's")
            upstream = await self._open_upstream(request, caller)
            await self._serve(request, caller, reader, writer, upstream, started)
        except BadRequest as error:
            self._refuse(writer, request, caller, source, Refused(400, "malformed", str(error)))
        except Refused as error:
            self._refuse(writer, request, caller, source, error)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one bad connection must not end the listener
            log.exception("egress proxy error")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.settings.head_seconds):
                return await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(f"request head over {MAX_HEAD_BYTES} bytes") from None
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise BadRequest("request head ended early") from None
            return None  # connected and closed: nothing to answer
        except TimeoutError:
            raise BadRequest(
                f"request head not received within {self.settings.head_seconds:g} s"
            ) from None

    async def _open_upstream(
        self, request: ProxyRequest, caller: Caller
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        policy = caller.policy
        refusal = policy.target_allowed(request.host, request.port)
        if refusal is not None:
            raise Refused(403, refusal.reason, refusal.message)
        if isinstance(request.host, str):
            try:
                addresses = await asyncio.wait_for(
                    self.resolver.resolve(request.host, request.port),
                    self.settings.connect_seconds,
                )
            except (OSError, TimeoutError, ValueError) as error:
                raise Refused(
                    502, "unresolved", f"cannot resolve {request.host}: {error}"
                ) from None
        else:
            addresses = [request.host]
        usable, refusal = policy.usable_addresses(request.port, addresses)
        if refusal is not None:
            raise Refused(
                403,
                refusal.reason,
                f"{request.host} resolves to no allowed address: {refusal.message}",
            )
        self._take_slot(caller)
        try:
            return await self._connect(usable, request.port)
        except BaseException:
            self._release_slot(caller)
            raise

    def _take_slot(self, caller: Caller) -> None:
        mine = self._open_by_session.get(caller.uid, 0)
        if self._open >= self.settings.max_tunnels:
            raise Refused(429, "limit", "the egress proxy has too many open connections")
        if mine >= self.settings.max_tunnels_per_session:
            raise Refused(
                429,
                "limit",
                f"this session has {mine} connections open through the egress proxy "
                f"(limit {self.settings.max_tunnels_per_session})",
            )
        self._open += 1
        self._open_by_session[caller.uid] = mine + 1
        self.metrics.open_tunnels.inc()

    def _release_slot(self, caller: Caller) -> None:
        self._open -= 1
        left = self._open_by_session.get(caller.uid, 1) - 1
        if left > 0:
            self._open_by_session[caller.uid] = left
        else:
            self._open_by_session.pop(caller.uid, None)
        self.metrics.open_tunnels.dec()

    async def _connect(
        self, addresses: list[IPAddress], port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The first of the checked addresses that answers (never a second resolution)."""
        last: BaseException | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(self.settings.connect_seconds):
                    return await asyncio.open_connection(str(address), port, limit=BUFFER)
            except (OSError, TimeoutError) as error:
                last = error
        if isinstance(last, TimeoutError):
            raise Refused(504, "connect-timeout", "the upstream did not answer in time")
        raise Refused(502, "connect-failed", f"cannot connect upstream: {last}")

    async def _serve(
        self,
        request: ProxyRequest,
        caller: Caller,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        started: float,
    ) -> None:
        up_reader, up_writer = upstream
        kind = "connect" if request.is_connect else "http"
        self.metrics.requests.labels(kind=kind, result="allowed").inc()
        self._log("allowed", request, caller, 200, started)
        try:
            if request.is_connect:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(request.upstream_head())
            await self._tunnel(reader, writer, up_reader, up_writer)
        finally:
            self._release_slot(caller)
            with contextlib.suppress(Exception):
                up_writer.close()

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        last = [loop.time()]
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, last, "up")),
            asyncio.create_task(self._pump(up_reader, writer, last, "down")),
        ]
        try:
            # Half-closes pass through; the tunnel ends when both ways have ended, or
            # when one fails.
            pending = set(pumps)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.cancelled() and t.result() is False for t in done):
                    break
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(BaseException):
                    await task

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        last: list[float],
        direction: str,
    ) -> bool:
        """Copy until EOF (True) or until the tunnel is idle or broken (False)."""
        loop = asyncio.get_running_loop()
        idle = self.settings.idle_seconds
        counter = self.metrics.bytes.labels(direction=direction)
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        data = await reader.read(BUFFER)
                except TimeoutError:
                    if loop.time() - last[0] >= idle:
                        return False
                    continue  # the other direction is busy: a one-way transfer
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return True
                last[0] = loop.time()
                counter.inc(len(data))
                writer.write(data)
                async with asyncio.timeout(idle):
                    await writer.drain()  # backpressure: a slow reader slows the sender
        except (ConnectionError, TimeoutError, OSError):
            return False

    # --- refusals ------------------------------------------------------------------------

    def _refuse(
        self,
        writer: asyncio.StreamWriter,
        request: ProxyRequest | None,
        caller: Caller | None,
        source: str,
        error: Refused,
    ) -> None:
        kind = "connect" if request is not None and request.is_connect else "http"
        result = "refused" if error.status in (400, 403, 429) else "error"
        self.metrics.requests.labels(kind=kind, result=result).inc()
        if error.status in (400, 403, 429):
            self.metrics.refused.labels(reason=error.reason).inc()
        message = str(error)
        with contextlib.suppress(Exception):
            writer.write(answer(error.status, _REASONS.get(error.status, "Error"), message))
        log.warning(
            "egress refused" if result == "refused" else "egress failed",
            extra={
                "session_namespace": caller.namespace if caller else None,
                "session_name": caller.name if caller else None,
                "fields": {
                    "source": source,
                    "target": request.authority if request else None,
                    "status": error.status,
                    "reason": error.reason,
                    "message": message,
                },
            },
        )
        if caller is not None and request is not None and error.status == 403:
            self.reporter.report(
                caller,
                str(request.host),
                f"egress to {request.authority} refused: {message}",
            )

    def _log(
        self, what: str, request: ProxyRequest, caller: Caller, status: int, started: float
    ) -> None:
        log.info(
            f"egress {what}",
            extra={
                "session_namespace": caller.namespace,
                "session_name": caller.name,
                "fields": {
                    "target": request.authority,
                    "kind": "connect" if request.is_connect else "http",
                    "status": status,
                    "setup_ms": round((time.monotonic() - started) * 1000, 1),
                },
            },
        )
