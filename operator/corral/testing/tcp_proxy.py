"""A TCP proxy in front of the API server that a test can cut, for network faults.

An operator given a kubeconfig whose server is the proxy's port reaches the API server
only through it (the API server's certificate names 127.0.0.1, whatever the port).
`cut()` resets every connection and refuses new ones (an API server that is gone, as the
operator sees it); `blackhole()` keeps connections open but drops whatever is sent either
way (a partition: requests hang until the client gives up); `heal()` resets the
connections that lost bytes (as their TCP would time out) and forwards again. Bytes are
dropped, not held: a request sent into the black hole never arrives late.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import yaml

FORWARD, CUT, BLACKHOLE = "forward", "cut", "blackhole"


class CuttableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = FORWARD
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._broken: set[socket.socket] = set()
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of `original` whose server is this proxy."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == CUT:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), daemon=True, name="proxy-pump"
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == CUT:
                    break
                if self.mode == BLACKHOLE:
                    with self._lock:
                        self._broken |= {source, sink}
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self._lock:
                    self._sockets.discard(end)
                _close(end)

    def cut(self) -> None:
        """Reset every connection and refuse new ones until `heal()`."""
        self.mode = CUT
        with self._lock:
            open_sockets = list(self._sockets)
        for end in open_sockets:
            _close(end)

    def blackhole(self) -> None:
        """Drop everything, on old connections and new ones, until `heal()`."""
        self.mode = BLACKHOLE

    def heal(self) -> None:
        with self._lock:
            broken, self._broken = list(self._broken), set()
        for end in broken:
            _close(end)
        self.mode = FORWARD

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)


def _close(end: socket.socket) -> None:
    with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        end.close()
