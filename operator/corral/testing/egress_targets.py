"""A web server in the real node's "outside" network namespace, for the egress proxy's tests.

It answers every request with `200 hello <path>` and records who asked (the peer address)
and what (the request line), so a test can tell a request that came through the gateway's
egress proxy (peer: a gateway pod) from one that did not, and show that a refused request
never arrived.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from corral.testing.outside import listen_in

MAX_HEAD = 16 * 1024


@dataclass(frozen=True)
class Seen:
    peer: str
    request_line: str


@dataclass
class HttpTarget:
    namespace: Path
    host: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HttpTarget:
        self._sock = listen_in(self.namespace, self.host, self.port, backlog=64)
        self._thread = threading.Thread(target=self._serve, name="http-target", daemon=True)
        self._thread.start()
        return self

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def _serve(self) -> None:
        assert self._sock is not None
        while self._sock.fileno() != -1:
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, peer[0]), daemon=True).start()

    def _answer(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(10)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.seen.append(Seen(peer, line))
            parts = line.split(" ")
            body = f"hello {parts[1] if len(parts) > 1 else ''}\n".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2)
