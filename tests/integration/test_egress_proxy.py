"""The egress proxy as a server: real sockets on loopback, a local upstream, a session whose
pod address is 127.0.0.1 (the test client), names resolved by a static map.

Loopback is refused like any private range unless the spec's CIDRs open it: here the spec
opens 127.0.0.1/32 (the upstream) and nothing else; 127.0.0.2 is a decoy that must never
see a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from corral.gateway.egress import EgressMetrics, EgressProxy, EgressSettings, Resolver
from corral.gateway.egress_index import Caller, EgressIndex
from corral.gateway.egress_report import RefusalReporter


@dataclass
class Upstream:
    """An echo server that also answers one plain HTTP request, and counts connections."""

    host: str
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self, port: int = 0) -> Upstream:
        self.server = await asyncio.start_server(self._serve, self.host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.read(4)
            if first in (b"GET ", b"POST"):
                head = first + await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                body = b"hello from upstream"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return
            writer.write(first)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Harness:
    proxy: EgressProxy
    port: int
    upstream: Upstream
    decoy: Upstream
    events: list[tuple[Caller, str]]
    registry: CollectorRegistry

    async def ask(self, head: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(head)
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return status, reader, writer

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def make_index(allowed: list[str], cidrs: list[dict[str, Any]]) -> EgressIndex:
    index = EgressIndex()
    index.on_session(
        "ADDED",
        {
            "metadata": {"namespace": "demo", "name": "agent", "uid": "uid-1"},
            "spec": {
                "network": {"allowPublicHttps": False, "allowedDomains": allowed, "egress": cidrs}
            },
        },
    )
    index.on_pod(
        "ADDED",
        {
            "metadata": {
                "namespace": "demo",
                "name": "agent-1",
                "ownerReferences": [{"uid": "uid-1", "controller": True}],
            },
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        },
    )
    return index


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    upstream = await Upstream("127.0.0.1").start()
    decoy = await Upstream("127.0.0.2").start(upstream.port)
    port = upstream.port
    index = make_index(
        [f"allowed.test:{port}", f"rebind.test:{port}", f"127.0.0.2:{port}"],
        [{"cidr": "127.0.0.1/32", "ports": [{"port": port}]}],
    )
    events: list[tuple[Caller, str]] = []

    async def post(caller: Caller, message: str) -> None:
        events.append((caller, message))

    registry = CollectorRegistry()
    proxy = EgressProxy(
        index,
        EgressMetrics(registry),
        RefusalReporter(post),
        Resolver({"allowed.test": ["127.0.0.1"], "rebind.test": ["127.0.0.2"]}),
        EgressSettings(idle_seconds=1.0, head_seconds=1.0),
    )
    server = await proxy.start("127.0.0.1", 0)
    yield Harness(proxy, server.sockets[0].getsockname()[1], upstream, decoy, events, registry)
    server.close()
    await server.wait_closed()
    await proxy.reporter.close()
    await upstream.stop()
    await decoy.stop()


async def test_connect_tunnels_bytes_both_ways(harness: Harness) -> None:
    port = harness.upstream.port
    status, reader, writer = await harness.ask(
        f"CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode()
    )
    assert status == b"HTTP/1.1 200 Connection established\r\n\r\n"
    payload = bytes(range(256)) * 16384  # 4 MiB
    writer.write(payload)
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    assert echoed == payload
    writer.write_eof()  # half-close passes through: the echo server ends, so does the tunnel
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert harness.upstream.connections == 1
    assert harness.metric("corral_gateway_egress_bytes_total", direction="up") == len(payload)
    assert (
        harness.metric("corral_gateway_egress_requests_total", kind="connect", result="allowed")
        == 1
    )


async def test_plain_http_is_forwarded_in_origin_form(harness: Harness) -> None:
    port = harness.upstream.port
    status, reader, writer = await harness.ask(
        f"GET http://allowed.test:{port}/path?q=1 HTTP/1.1\r\nHost: allowed.test\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\nAccept: */*\r\n\r\n".encode()
    )
    assert status.startswith(b"HTTP/1.1 200 OK")
    assert await asyncio.wait_for(reader.read(), 10) == b"hello from upstream"
    writer.close()
    (head,) = harness.upstream.heads
    assert head.startswith(b"GET /path?q=1 HTTP/1.1\r\nHost: allowed.test:")
    assert b"Proxy-Authorization" not in head and b"Connection: close" in head


@pytest.mark.parametrize(
    ("target", "reason", "text"),
    [
        ("refused.test", "not-allowed", b"not in the session's spec.network.allowedDomains"),
        ("rebind.test", "loopback", b"resolves to no allowed address: 127.0.0.2 is a loopback"),
        ("127.0.0.2", "loopback", b"127.0.0.2 is a loopback address"),
    ],
)
async def test_refused_targets_get_403_and_nothing_reaches_them(
    harness: Harness, target: str, reason: str, text: bytes
) -> None:
    port = harness.upstream.port
    head = f"CONNECT {target}:{port} HTTP/1.1\r\n\r\n".encode()
    status, reader, writer = await harness.ask(head)
    body = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 403 Forbidden"), status
    assert text in body, body
    assert harness.upstream.connections == 0 and harness.decoy.connections == 0
    assert harness.metric("corral_gateway_egress_refused_total", reason=reason) == 1
    await asyncio.sleep(0.05)  # the Event is posted in the background
    ((caller, message),) = harness.events
    assert caller.name == "agent" and f"egress to {target}:{port} refused" in message


async def test_malformed_requests_get_400(harness: Harness) -> None:
    status, reader, writer = await harness.ask(b"GET /not-absolute HTTP/1.1\r\n\r\n")
    writer.close()
    assert status.startswith(b"HTTP/1.1 400 Bad Request")
    # A head that never ends is cut off after head_seconds, with a 400 too.
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)
    writer.write(b"CONNECT allowed.test:1 HTTP/1.1\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert harness.upstream.connections == 0
    assert harness.events == []  # only 403s reach the author


async def test_an_address_that_is_no_session_pod_is_refused(harness: Harness) -> None:
    harness.proxy.index = make_index([], [])
    harness.proxy.index.on_pod(
        "DELETED", {"metadata": {"namespace": "demo", "name": "agent-1"}, "status": {}}
    )
    status, _reader, writer = await harness.ask(
        f"CONNECT allowed.test:{harness.upstream.port} HTTP/1.1\r\n\r\n".encode()
    )
    writer.close()
    assert status.startswith(b"HTTP/1.1 403 Forbidden")
    assert harness.upstream.connections == 0
    assert harness.metric("corral_gateway_egress_refused_total", reason="unknown-client") == 1


async def test_an_idle_tunnel_is_closed(harness: Harness) -> None:
    status, reader, writer = await harness.ask(
        f"CONNECT allowed.test:{harness.upstream.port} HTTP/1.1\r\n\r\n".encode()
    )
    assert status.startswith(b"HTTP/1.1 200")
    assert harness.metric("corral_gateway_egress_open_tunnels") == 1
    # idle_seconds is 1: the proxy closes the quiet tunnel on its own.
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await asyncio.sleep(0.05)
    assert harness.metric("corral_gateway_egress_open_tunnels") == 0


async def test_a_client_that_does_not_read_slows_the_upstream(harness: Harness) -> None:
    """Backpressure: the proxy buffers a bounded amount, then stops reading upstream."""
    sent = 0
    pushing = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        pushing.set()
        with contextlib.suppress(ConnectionError):
            for _ in range(2048):  # 128 MiB, unless held back
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    harness.proxy.index = make_index([f"flood.test:{port}"], [{"cidr": "127.0.0.1/32"}])
    harness.proxy.resolver = Resolver({"flood.test": ["127.0.0.1"]})
    harness.proxy.settings.idle_seconds = 30
    status, reader, writer = await harness.ask(
        f"CONNECT flood.test:{port} HTTP/1.1\r\n\r\n".encode()
    )
    assert status.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(pushing.wait(), 10)
    await asyncio.sleep(1.5)
    held = sent
    # Kernel socket buffers on both sides plus the proxy's bounded buffers: far below 128 MiB.
    assert held < 48 * 1024 * 1024, held
    got = 0
    while got < 4 * 1024 * 1024:  # reading again lets the upstream go on
        got += len(await asyncio.wait_for(reader.read(1 << 20), 10))
    await asyncio.sleep(0.2)
    assert sent > held
    writer.close()
    server.close()


async def test_the_tunnel_moves_bytes_both_ways_and_passes_half_closes() -> None:
    """Bytes both ways on socket pairs, intact, counted, and half-closes passed on."""
    from corral.gateway.egress_tunnel import tunnel

    client_end, proxy_client = socket.socketpair()
    proxy_upstream, upstream_end = socket.socketpair()
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.setblocking(False)
    counted: dict[str, int] = {"up": 0, "down": 0}

    def counter(direction: str) -> Any:
        return lambda n: counted.__setitem__(direction, counted[direction] + n)

    loop = asyncio.get_running_loop()
    running = asyncio.create_task(
        tunnel(
            proxy_client,
            proxy_upstream,
            idle=10,
            counters={"up": counter("up"), "down": counter("down")},
        )
    )
    payload = os.urandom(3 * 1024 * 1024)

    async def receive(sock: socket.socket, size: int) -> bytes:
        got = bytearray()
        while len(got) < size:
            chunk = await loop.sock_recv(sock, 1 << 20)
            assert chunk, "EOF too early"
            got += chunk
        return bytes(got)

    sending = asyncio.create_task(loop.sock_sendall(client_end, payload))
    assert await asyncio.wait_for(receive(upstream_end, len(payload)), 30) == payload
    await sending
    await loop.sock_sendall(upstream_end, b"answer")
    assert await asyncio.wait_for(receive(client_end, 6), 10) == b"answer"
    client_end.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(loop.sock_recv(upstream_end, 10), 10) == b""  # passed on
    await loop.sock_sendall(upstream_end, b"late")  # the other way still flows
    assert await asyncio.wait_for(receive(client_end, 4), 10) == b"late"
    upstream_end.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(running, 10)  # both ways ended: the tunnel is done
    assert counted == {"up": len(payload), "down": 10}
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.close()
