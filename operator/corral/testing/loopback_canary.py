"""A canary for the runner's egress gate (corral.runner.egress_gate) on loopback: it answers
every connection until `drop()`, then drops them unanswered (its accept queue full: Linux
drops the SYN, as a NetworkPolicy agent's DROP rule does); `close()` refuses them (as a
REJECT rule does)."""

from __future__ import annotations

import socket
import threading


class LoopbackCanary:
    """Answers every connection until `drop()`; from then on drops them unanswered."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)  # one queued connection at most: the next SYN is dropped
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self._dropping = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._dropping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def drop(self) -> None:
        self._dropping.set()
        self._thread.join()
        filler = socket.socket()  # fills the accept queue
        filler.connect(("127.0.0.1", self.port))
        self._held.append(filler)

    def close(self) -> None:
        self._dropping.set()
        self._thread.join()
        for sock in self._held:
            sock.close()
        self.server.close()
