"""`corral model-relay`: plain HTTP on an address pods can reach, forwarded to the real API.

The real node's pods have no route out (corral.cluster.node). With ANTHROPIC_API_KEY,
`corral up` runs this relay: its listening socket is made inside the node's "outside"
network namespace (`--netns`), the process stays in the host's, where HTTPS to the API
works. It forwards every request as it came (the key is the one the gateway's model
proxy adds, from its Secret in the operator's namespace, in the x-api-key header) and
streams the answer back; it logs no headers.
A developer tool of `corral up`, left out of `corral --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

# Headers of one hop, never forwarded (RFC 9110 7.6.1), and Host (set from the upstream).
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "model-relay",
        description="Forward plain HTTP from an address in a network namespace to the real "
        "Anthropic API (used by `corral up` with ANTHROPIC_API_KEY on the real node).",
    )
    parser.add_argument("--upstream", required=True, help="e.g. https://api.anthropic.com")
    parser.add_argument("--host", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--netns", type=Path, help="network namespace to listen in")
    parser.set_defaults(handler=run)


def forwarded_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


def listen_socket(host: str, port: int, netns_path: Path | None) -> socket.socket:
    if netns_path is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        from corral.cluster import netns

        with netns.inside(netns_path):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


CLIENT = web.AppKey("client", ClientSession)


def relay_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 2**20)

    async def open_client(app: web.Application) -> Any:
        # Bytes as they came: a gzip answer stays gzip, with its own Content-Encoding.
        app[CLIENT] = ClientSession(
            timeout=ClientTimeout(total=None, sock_read=600), auto_decompress=False
        )
        yield
        await app[CLIENT].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        client = request.app[CLIENT]
        async with client.request(
            request.method,
            upstream.rstrip("/") + request.rel_url.path_qs,
            headers=forwarded_headers(request.headers),
            data=body or None,
        ) as answer:
            response = web.StreamResponse(
                status=answer.status, headers=forwarded_headers(answer.headers)
            )
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(open_client)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _serve(args: argparse.Namespace) -> None:
    sock = listen_socket(args.host, args.port, args.netns)
    runner = web.AppRunner(relay_app(args.upstream), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    print(f"relaying http://{args.host}:{args.port} to {args.upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0
