"""`corral fake-anthropic --port N`: serve the fake Messages API until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from corral.testing.fake_anthropic import FakeAnthropic


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fake-anthropic",
        # No help= on purpose: a test tool, left out of `corral --help` (see corral.cli).
        description="Serve a scripted fake of the Anthropic Messages API until interrupted "
        "(a test tool: the runner and the tests point ANTHROPIC_BASE_URL at it; scripts are "
        "posted to /_fake/script).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="port to bind; 0 picks a free one")
    parser.set_defaults(handler=run)


async def _serve(host: str, port: int) -> None:
    fake = FakeAnthropic()
    url = await fake.start(host, port)
    print(f"fake Anthropic API on {url} (admin: {url}/_fake/script)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args.host, args.port))
    return 0
