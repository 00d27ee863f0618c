"""Test hosts beside the real node: servers in the node's "outside" network namespace.

The real node's pods reach nothing but addresses the project created (see
corral.cluster.node). These helpers put servers on such addresses from inside the test
process: a thread switches into the outside namespace, binds there, and keeps serving;
the rest of the test process stays in the host's namespace and talks to the servers
in-process (FakeAnthropic's script and records), never over the network.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from corral.cluster import netns
from corral.testing.fake_anthropic import FakeAnthropic


def start_fake_anthropic(fake: FakeAnthropic, namespace: Path, host: str, port: int) -> str:
    """Serve `fake` on host:port inside `namespace`; returns its URL as pods see it."""
    urls: list[str] = []
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            # The server thread that start_in_thread makes inherits this thread's namespace.
            with netns.inside(namespace):
                urls.append(fake.start_in_thread(host, port))
        except BaseException as error:  # handed to the caller
            errors.append(error)

    starter = threading.Thread(target=launch, name="fake-anthropic-starter")
    starter.start()
    starter.join(30)
    if errors:
        raise RuntimeError("the fake Anthropic API did not start") from errors[0]
    if not urls:
        raise RuntimeError("the fake Anthropic API did not start within 30 s")
    return urls[0]


def listen_in(namespace: Path, host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket made inside `namespace` (the process stays where it is), with
    a short accept timeout so that a serving thread notices when it is stopped."""
    with netns.inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.settimeout(0.5)
    return sock


@dataclass
class Decoy:
    """A TCP server that greets every connection with `banner` and counts them."""

    namespace: Path
    host: str
    port: int
    banner: bytes = b"decoy\n"
    connections: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Decoy:
        self._sock = listen_in(self.namespace, self.host, self.port, backlog=16)
        self._thread = threading.Thread(target=self._serve, name=f"decoy-{self.host}", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while self._sock.fileno() != -1:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            try:
                conn.sendall(self.banner)
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2)
