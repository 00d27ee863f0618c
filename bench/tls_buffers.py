"""Resident memory per open TLS client connection, with asyncio's read buffer and Corral's.

    python -m bench.tls_buffers --connections 200 --bulk-mib 256 --rounds 5 --out FILE

The operator's API connections and the gateway's model-proxy connections to its upstream are
aiohttp TLS clients that stay open (keep-alive pools, streamed replies). One TLS server in
this process streams a first chunk on every request and then holds it open; for each round
and each variant (alternately) a fresh client process opens `--connections` streams at once,
reads each one's first chunk, and reports how much its resident memory (VmRSS) grew from
before the first connection; then it reads one response of `--bulk-mib` MiB and reports
its own CPU time for it (the cost of more, smaller reads). Variants: asyncio's own read
buffer, and the one `corral.kube.tls_buffers.shrink_tls_read_buffers` sets (or
`--buffer-kib`, to weigh another size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.report import this_command
from bench.run import machine
from corral.kube.tls_buffers import TLS_READ_BUFFER_BYTES, shrink_tls_read_buffers

CHUNK = b"x" * 4096
MIB = 1024 * 1024
VARIANTS = ("asyncio", "corral")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _client(
    port: int, ca: str, connections: int, bulk_mib: int, shrink_to: int | None
) -> dict[str, Any]:
    if shrink_to is not None:
        shrink_tls_read_buffers(shrink_to)
    context = ssl.create_default_context(cafile=ca)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # One request first: what a pool's first connection loads (TLS state, aiohttp's
        # parser) is not a per-connection cost.
        async with session.get(f"https://127.0.0.1:{port}/", ssl=context) as first:
            await first.content.readexactly(len(CHUNK))
        before = rss_kib()
        url = f"https://127.0.0.1:{port}/"
        responses = [await session.get(url, ssl=context) for _ in range(connections)]
        await asyncio.gather(*(r.content.readexactly(len(CHUNK)) for r in responses))
        after = rss_kib()
        for response in responses:
            response.close()
        cpu = time.process_time()
        async with session.get(f"https://127.0.0.1:{port}/bulk/{bulk_mib}", ssl=context) as bulk:
            received = 0
            async for chunk in bulk.content.iter_any():
                received += len(chunk)
        cpu = time.process_time() - cpu
    assert received == bulk_mib * MIB, received
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bulk_cpu_ms_per_mib": round(1000 * cpu / bulk_mib, 3),
    }


def _client_main(args: argparse.Namespace) -> None:
    shrink_to = args.buffer_kib * 1024 if args.variant == "corral" else None
    row = asyncio.run(_client(args.port, args.ca, args.connections, args.bulk_mib, shrink_to))
    print(json.dumps(row), flush=True)


async def _serve(certificate: Path, key: Path) -> tuple[web.AppRunner, int]:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(CHUNK)
        await asyncio.sleep(3600)  # until the client goes
        return response

    async def bulk(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        block = b"y" * MIB
        for _ in range(int(request.match_info["mib"])):
            await response.write(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", stream)
    app.router.add_get("/bulk/{mib}", bulk)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=4096)
    await site.start()
    return runner, runner.addresses[0][1]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from corral.cluster.pki import Pki

    with tempfile.TemporaryDirectory() as folder:
        pki = Pki(Path(folder))
        pki.ensure(("127.0.0.1",))
        runner, port = await _serve(pki.cert("apiserver"), pki.key("apiserver"))
        rows = []
        try:
            for round_ in range(args.rounds):
                for variant in VARIANTS:
                    command = [sys.executable, "-m", "bench.tls_buffers", "--client"]
                    command += ["--variant", variant, "--port", str(port)]
                    command += ["--ca", str(pki.ca_cert), "--connections", str(args.connections)]
                    command += ["--bulk-mib", str(args.bulk_mib)]
                    command += ["--buffer-kib", str(args.buffer_kib)]
                    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
                    out, _ = await process.communicate()
                    if process.returncode != 0:
                        raise SystemExit(f"client {variant} exited {process.returncode}")
                    row = json.loads(out)
                    grown = row["rss_after_kib"] - row["rss_before_kib"]
                    row |= {
                        "round": round_,
                        "variant": variant,
                        "kib_per_connection": round(grown / args.connections, 1),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            await runner.cleanup()
    median = {
        variant: {
            key: statistics.median(r[key] for r in rows if r["variant"] == variant)
            for key in ("kib_per_connection", "bulk_cpu_ms_per_mib")
        }
        for variant in VARIANTS
    }
    return {
        "machine": machine(),
        "command": this_command(),
        "python": sys.version.split()[0],
        "connections": args.connections,
        "rounds": args.rounds,
        "rows": rows,
        "bulk_mib": args.bulk_mib,
        "corral_buffer_kib": args.buffer_kib,
        "median": median,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--bulk-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--buffer-kib",
        type=int,
        default=TLS_READ_BUFFER_BYTES // 1024,
        help="the read buffer of the `corral` variant (default: Corral's)",
    )
    parser.add_argument("--out", type=Path)
    # The client process's own arguments.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    if args.client:
        _client_main(args)
        return
    result = asyncio.run(_run(args))
    print(json.dumps(result["median"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
