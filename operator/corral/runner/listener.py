"""The runner's listening socket, bound before anything else is imported.

The kubelet probes readiness once, at once, when it first sees the container running, and
then only every period. A socket that listens from the first milliseconds lets that first
probe connect and wait in the kernel's backlog (and then in `/readyz?wait=`) until the
runner is ready, instead of being refused and retried a whole period later.
"""

from __future__ import annotations

import socket

BACKLOG = 128


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR, as aiohttp's own sites set it)."""
    return socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)
