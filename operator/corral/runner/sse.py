"""Server-sent events: one JSON object per `data:` line."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from corral.runner.agent import Turn
from corral.runner.event_buffer import EventBuffer
from corral.runner.events import Event
from corral.runner.web import web
from corral.stalled_reader import send_or_cut

# A comment line this often keeps proxies from cutting a stream during long tool runs.
KEEPALIVE_SECONDS = 15.0


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
    )
    await response.prepare(request)
    return response


def frame(event: Event) -> bytes:
    return f"data: {json.dumps(event, default=str)}\n\n".encode()


async def turn_events(
    turn: Turn, keepalive: float = KEEPALIVE_SECONDS
) -> AsyncGenerator[Event | None, None]:
    """The turn's events up to and including its result; None marks a quiet interval."""
    while True:
        event = await turn.next_event(keepalive)
        yield event
        if event is not None and event.get("type") == "result":
            return


async def watched_events(
    events: EventBuffer, keepalive: float = KEEPALIVE_SECONDS
) -> AsyncGenerator[Event | None, None]:
    """A watcher's events for as long as they are read; None marks a quiet interval."""
    while True:
        yield await events.get(keepalive)


async def send_turn(request: web.Request, response: web.StreamResponse, turn: Turn) -> None:
    try:
        async for event in turn_events(turn):
            data = b": keepalive\n\n" if event is None else frame(event)
            await send_or_cut(request, response.write(data))
    finally:
        turn.events.close()  # a client that went away keeps nothing buffered
