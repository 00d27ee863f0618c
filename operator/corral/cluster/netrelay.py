"""TCP relays between the host's loopback and the real node's network namespace.

The real node (containerd, kubelet, kube-proxy, kube-router and every pod) lives in a
network namespace of its own, with no route out of it. The control plane stays on the
host's loopback. This one small process joins the two without giving the namespace a
route anywhere:

* `forward` rules: listen on an address in one namespace, connect to a fixed address in
  another (the node's kubelet and pods reach the API server, tests reach a fake API);
* an HTTP CONNECT proxy on a unix socket, used by the API server's egress selector for
  its traffic to the cluster (kubelet exec and logs, pod and service proxy): it connects
  from inside the node's namespace, and only to addresses inside the node's ranges.

A socket keeps the network namespace it was created in, so the process switches its
(only) thread into a namespace just long enough to create a socket there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
HOST = "host"  # the namespace this process started in (the host's, normally)


@dataclass(frozen=True)
class Endpoint:
    netns: str  # HOST, or a path such as /run/netns/NAME
    host: str
    port: int


@dataclass(frozen=True)
class Forward:
    listen: Endpoint
    target: Endpoint


@dataclass
class RelayConfig:
    forwards: list[Forward] = field(default_factory=list)
    # HTTP CONNECT over a unix socket, connecting from `connect_netns` to `allowed_cidrs`.
    connect_socket: str | None = None
    connect_netns: str | None = None
    allowed_cidrs: list[str] = field(default_factory=list)
    # Names the API server may dial (a node's Hostname address) and the address each means.
    hosts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        def endpoint(e: Endpoint) -> dict[str, object]:
            return {"netns": e.netns, "host": e.host, "port": e.port}

        return json.dumps(
            {
                "forwards": [
                    {"listen": endpoint(f.listen), "target": endpoint(f.target)}
                    for f in self.forwards
                ],
                "connectSocket": self.connect_socket,
                "connectNetns": self.connect_netns,
                "allowedCidrs": self.allowed_cidrs,
                "hosts": self.hosts,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> RelayConfig:
        body = json.loads(text)
        forwards = [
            Forward(Endpoint(**f["listen"]), Endpoint(**f["target"])) for f in body["forwards"]
        ]
        return cls(
            forwards=forwards,
            connect_socket=body.get("connectSocket"),
            connect_netns=body.get("connectNetns"),
            allowed_cidrs=list(body.get("allowedCidrs") or []),
            hosts=dict(body.get("hosts") or {}),
        )


class Namespaces:
    """Switches the calling thread between network namespaces by path."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._fds: dict[str, int] = {}

    def _fd(self, netns: str) -> int:
        if netns == HOST:
            return self._home
        if netns not in self._fds:
            self._fds[netns] = os.open(netns, os.O_RDONLY)
        return self._fds[netns]

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")

    @contextlib.contextmanager
    def inside(self, netns: str) -> Iterator[None]:
        if netns == HOST:
            yield
            return
        self._setns(self._fd(netns))
        try:
            yield
        finally:
            self._setns(self._home)

    def socket(self, netns: str) -> socket.socket:
        with self.inside(netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.ns = Namespaces()
        self._allowed = [ipaddress.ip_network(c, strict=False) for c in config.allowed_cidrs]
        self._servers: list[asyncio.AbstractServer] = []

    async def _connect(self, target: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = self.ns.socket(target.netns)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (target.host, target.port)), 10
            )
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _forward(
        self, target: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream = await self._connect(target)
        except (OSError, TimeoutError):
            writer.close()
            return
        await _splice((reader, writer), upstream)

    async def _connect_proxy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One HTTP CONNECT tunnel, as the API server's egress selector opens them."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, authority, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            host, _, port_text = authority.rpartition(":")
            host = host.strip("[]")
            host = self.config.hosts.get(host, host)
            if method != "CONNECT" or not self._is_allowed(host):
                writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            assert self.config.connect_netns is not None
            upstream = await self._connect(
                Endpoint(self.config.connect_netns, host, int(port_text))
            )
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            with contextlib.suppress(OSError):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice((reader, writer), upstream)

    def _is_allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._allowed)

    async def start(self) -> None:
        for rule in self.config.forwards:
            sock = self.ns.socket(rule.listen.netns)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((rule.listen.host, rule.listen.port))
            sock.listen(256)

            async def handle(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                target: Endpoint = rule.target,
            ) -> None:
                await self._forward(target, reader, writer)

            self._servers.append(await asyncio.start_server(handle, sock=sock))
        if self.config.connect_socket:
            path = self.config.connect_socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server = await asyncio.start_unix_server(self._connect_proxy, path=path)
            os.chmod(path, 0o600)
            self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()


async def serve(config: RelayConfig) -> None:
    relay = Relay(config)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m corral.cluster.netrelay CONFIG.json", file=sys.stderr)
        return 2
    config = RelayConfig.from_json(Path(args[0]).read_text())
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
