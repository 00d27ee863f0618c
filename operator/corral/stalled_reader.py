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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

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
