"""The egress proxy: an HTTP forward proxy for session pods, on a listener of its own.

A connection is identified by its source address (the session pod's IP, from the
gateway's informers; see egress_index). Its request is parsed and bounded, checked against
the session's policy, the name resolved here and each address checked (DNS rebinding), and
only then is an upstream connection opened, to the address that was checked: nothing of a
refused request leaves the gateway. CONNECT becomes a byte tunnel (egress_tunnel: both
directions copied through pooled buffers, backpressure, closed after `idle_seconds`
without a byte either way); plain HTTP in absolute form is rewritten to origin form, then
tunnelled the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from corral.gateway.egress_http import MAX_HEAD_BYTES, BadRequest, ProxyRequest, parse_head
from corral.gateway.egress_http import response_head as answer
from corral.gateway.egress_index import Caller, EgressIndex
from corral.gateway.egress_policy import IPAddress
from corral.gateway.egress_report import RefusalReporter
from corral.gateway.egress_tunnel import tunnel

log = logging.getLogger("corral.gateway.egress")
# Threads resolving names (see Resolver); a session may hold at most max_lookups_per_session.
RESOLVER_THREADS = 32
UNKNOWN_CLIENT = "unknown-client"


@dataclass
class EgressSettings:
    idle_seconds: float = 300.0
    connect_seconds: float = 10.0
    head_seconds: float = 10.0
    max_tunnels: int = 8192
    max_tunnels_per_session: int = 512
    max_lookups_per_session: int = 8


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
    everything else goes to the system resolver (the pod's: cluster DNS), on threads of
    its own: a lookup that never answers holds its thread past the proxy's timeout, and
    must not take the event loop's default pool (and every other session's lookups, and
    the gateway's other blocking work) with it."""

    static: Mapping[str, Sequence[str]] = field(default_factory=dict)
    threads: int = RESOLVER_THREADS
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        pinned = self.static.get(host)
        if pinned is not None:
            return [ipaddress.ip_address(a) for a in pinned]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="egress-dns")
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(
            self._pool, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        )
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


class EgressServer:
    """The listening socket and its accept loop (the shape of asyncio.Server that callers use)."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        self.sockets[0].close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def serve_forever(self) -> None:
        await self._task


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
        self._lookups_by_session: dict[str, int] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> EgressServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=4096)
        listener.setblocking(False)
        return EgressServer(listener, asyncio.create_task(self._accept(listener)))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    conn, peer = await loop.sock_accept(listener)
                except OSError as error:  # e.g. EMFILE: wait instead of spinning
                    log.warning("egress accept failed", extra={"fields": {"error": str(error)}})
                    await asyncio.sleep(0.1)
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                task = asyncio.create_task(self.handle(conn, peer))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        finally:
            for task in list(self._connections):
                task.cancel()

    # --- one connection ------------------------------------------------------------------

    async def handle(self, conn: socket.socket, peer: object) -> None:
        started = time.monotonic()
        source = client_address(peer)
        request: ProxyRequest | None = None
        caller: Caller | None = None
        try:
            read = await self._read_head(conn)
            if read is None:
                return
            head, early = read
            request = parse_head(head)
            caller = self.index.caller(source)
            if caller is None:
                raise Refused(403, UNKNOWN_CLIENT, "this address is not a session pod's")
            upstream = await self._open_upstream(request, caller)
            await self._serve(request, caller, conn, early, upstream, started)
        except BadRequest as error:
            await self._refuse(conn, request, caller, source, Refused(400, "malformed", str(error)))
        except Refused as error:
            await self._refuse(conn, request, caller, source, error)
        except OSError:
            pass
        except Exception:  # one bad connection must not end the listener
            log.exception("egress proxy error")
        finally:
            conn.close()

    async def _read_head(self, conn: socket.socket) -> tuple[bytes, bytes] | None:
        """The request head, and whatever the client sent after it already."""
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            async with asyncio.timeout(self.settings.head_seconds):
                while True:
                    chunk = await loop.sock_recv(conn, 8192)
                    if not chunk:
                        if buffer:
                            raise BadRequest("request head ended early")
                        return None  # connected and closed: nothing to answer
                    buffer += chunk
                    end = buffer.find(b"\r\n\r\n")
                    if end >= 0:
                        return buffer[: end + 4], buffer[end + 4 :]
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise BadRequest(f"request head over {MAX_HEAD_BYTES} bytes")
        except TimeoutError:
            raise BadRequest(
                f"request head not received within {self.settings.head_seconds:g} s"
            ) from None

    async def _open_upstream(self, request: ProxyRequest, caller: Caller) -> socket.socket:
        policy = caller.policy
        refusal = policy.target_allowed(request.host, request.port)
        if refusal is not None:
            raise Refused(403, refusal.reason, refusal.message)
        if isinstance(request.host, str):
            lookups = self._lookups_by_session.get(caller.uid, 0)
            if lookups >= self.settings.max_lookups_per_session:
                raise Refused(
                    429,
                    "limit",
                    f"this session has {lookups} name lookups in flight through the egress "
                    f"proxy (limit {self.settings.max_lookups_per_session})",
                )
            self._lookups_by_session[caller.uid] = lookups + 1
            try:
                addresses = await asyncio.wait_for(
                    self.resolver.resolve(request.host, request.port),
                    self.settings.connect_seconds,
                )
            except (OSError, TimeoutError, ValueError) as error:
                raise Refused(
                    502, "unresolved", f"cannot resolve {request.host}: {error}"
                ) from None
            finally:
                left = self._lookups_by_session.pop(caller.uid, 1) - 1
                if left > 0:
                    self._lookups_by_session[caller.uid] = left
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

    async def _connect(self, addresses: list[IPAddress], port: int) -> socket.socket:
        """The first of the checked addresses that answers (never a second resolution)."""
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for address in addresses:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.settings.connect_seconds):
                    await loop.sock_connect(sock, (str(address), port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except BaseException as error:
                sock.close()
                if not isinstance(error, OSError | TimeoutError):
                    raise
                last = error
        if isinstance(last, TimeoutError):
            raise Refused(504, "connect-timeout", "the upstream did not answer in time")
        raise Refused(502, "connect-failed", f"cannot connect upstream: {last}")

    async def _serve(
        self,
        request: ProxyRequest,
        caller: Caller,
        conn: socket.socket,
        early: bytes,
        upstream: socket.socket,
        started: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        kind = "connect" if request.is_connect else "http"
        self.metrics.requests.labels(kind=kind, result="allowed").inc()
        self._log("allowed", request, caller, 200, started)
        counters: dict[str, Callable[[int], None]] = {
            direction: self.metrics.bytes.labels(direction=direction).inc
            for direction in ("up", "down")
        }
        try:
            async with asyncio.timeout(self.settings.connect_seconds):
                if request.is_connect:
                    await loop.sock_sendall(conn, b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    await loop.sock_sendall(upstream, request.upstream_head())
                if early:  # sent before the answer (a pipelined TLS hello, a request body)
                    await loop.sock_sendall(upstream, early)
                    counters["up"](len(early))
            await tunnel(conn, upstream, self.settings.idle_seconds, counters)
        except (OSError, TimeoutError):
            pass
        finally:
            self._release_slot(caller)
            upstream.close()

    # --- refusals ------------------------------------------------------------------------

    async def _refuse(
        self,
        conn: socket.socket,
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
        await self._answer_and_close(
            conn, answer(error.status, _REASONS.get(error.status, "Error"), message)
        )
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

    async def _answer_and_close(self, conn: socket.socket, data: bytes) -> None:
        """Send a refusal, then read what the client still sends for a moment before
        closing: closing with unread bytes would reset the connection and lose the answer."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                await loop.sock_sendall(conn, data)
                conn.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < MAX_HEAD_BYTES * 4:
                    chunk = await loop.sock_recv(conn, 16384)
                    if not chunk:
                        break
                    drained += len(chunk)

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
