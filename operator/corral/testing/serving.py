"""An aiohttp application served on a loopback port for the length of a `with` block.

Tests that need a real HTTP server (a runner, an upstream, a gateway) start one here
instead of repeating the runner/site set-up: the port is the one the kernel picked when
the site bound it, so no other process can take it in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(
    app: web.Application | web.AppRunner, **runner_options: Any
) -> AsyncIterator[str]:
    """Serve `app` (or an AppRunner not yet set up) on 127.0.0.1; yields its base URL."""
    runner = app if isinstance(app, web.AppRunner) else web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def route(handler: Any, path: str = "/", method: str = "*") -> web.Application:
    """An application with one route: `handler` at `path` for `method`."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    return app
