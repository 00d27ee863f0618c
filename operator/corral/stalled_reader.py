"""Sends to a client that may have stopped reading: it gets a minute, then is cut off.

aiohttp's `StreamResponse.write` and `WebSocketResponse.send_*` wait while the client's
socket buffer is full, for as long as the connection stays open; a WebSocket's heartbeat
does not end that wait (measured: a send still waiting 30 s on, with heartbeats every 2
s). A client that keeps its connection and reads nothing keeps it open indefinitely (its
kernel answers TCP's zero-window probes), and its stream would hold the handler, a stream
slot and, at the runner, its turn's event buffer (at the gateway, the runner's stream
behind it) until it goes away. So a send not finished after WRITE_STALL_SECONDS aborts
the connection. A reader that is slow but reading is not cut off: each send waits only
for room in the buffer, not for the client to read all of it.

The other way round, a server the gateway sends to (a runner: code inside a session) can
stop reading just the same, and aiohttp's client has no public way to abort a connection
whose writes are waiting. Such client sockets are made with the kernel's TCP user timeout
set to the same bound (`stall_bounded_socket`): Linux drops a connection whose sent data
has waited that long unacknowledged or on a zero window, which fails the waiting write.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

WRITE_STALL_SECONDS = 60.0


class ReaderStalled(ConnectionResetError):
    """The client took nothing for the stall bound; its connection was aborted. A
    ConnectionError, so every caller's "the client went away" handling applies."""


async def send_or_cut(
    request: web.BaseRequest, sending: Awaitable[None], seconds: float | None = None
) -> None:
    """Await `sending` (a write or a WebSocket send to the client of `request`), or raise
    ReaderStalled after `seconds` (default WRITE_STALL_SECONDS, read at the call) with the
    client's connection aborted."""
    bound = WRITE_STALL_SECONDS if seconds is None else seconds
    try:
        async with asyncio.timeout(bound):
            await sending
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # close() would wait for the buffer to drain
        raise ReaderStalled(f"the client read nothing for {bound:g} s") from None


def stall_bounded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A client socket for `addr_info` (family, type, proto, ...; aiohttp's
    `socket_factory`) that the kernel drops once data it sent has waited
    WRITE_STALL_SECONDS (read at the call) unacknowledged or on a zero window. An idle or
    merely slow peer is never cut off: the bound runs only while sent data makes no
    progress. Where the kernel has no such option (not Linux), a plain socket."""
    family, type_, proto = addr_info[:3]
    sock = socket.socket(family, type_, proto)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        milliseconds = max(1, round(WRITE_STALL_SECONDS * 1000))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
    return sock
