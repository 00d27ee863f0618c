"""Writes to a client that may have stopped reading: it gets a minute, then is cut off.

aiohttp's `StreamResponse.write` waits while the client's socket buffer is full, for as
long as the connection stays open. A client that keeps its connection and reads nothing
keeps it open indefinitely (its kernel answers TCP's zero-window probes), and its stream
would hold the handler, a stream slot and, at the runner, its turn's event buffer (and
at the gateway, the runner's stream behind it) until it goes away. So a write that has
not finished after WRITE_STALL_SECONDS aborts the connection. A reader that is slow but
reading finishes writes: each one waits only until the buffer is below aiohttp's high-water
mark again, not for the whole chunk to be read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

WRITE_STALL_SECONDS = 60.0


class ReaderStalled(ConnectionResetError):
    """The client took nothing for the stall bound; its connection was aborted. A
    ConnectionError, so every caller's "the client went away" handling applies."""


async def write_or_cut(
    request: web.BaseRequest,
    response: web.StreamResponse,
    data: bytes,
    seconds: float | None = None,
) -> None:
    """`response.write(data)`, or ReaderStalled after `seconds` (default
    WRITE_STALL_SECONDS, read at the call) with the client's connection aborted."""
    bound = WRITE_STALL_SECONDS if seconds is None else seconds
    try:
        async with asyncio.timeout(bound):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # close() would wait for the buffer to drain
        raise ReaderStalled(f"the client read nothing for {bound:g} s") from None
