"""Egress proxy benchmarks, side by side in one run, on loopback.

    python -m bench.egress                     # 1 GiB x 3 each way, 1,000 tunnels
    python -m bench.egress --mib 256 --tunnels 200 --quick

1. CONNECT tunnel throughput: bytes from an upstream to a client, and from a client to an
   upstream, straight and through the egress proxy, interleaved, median of the rounds.
   Target: through the proxy >= 0.8x straight.
2. 1,000 concurrent tunnels through one proxy process: its RSS and CPU once they are open
   (at rest) and while each tunnel echoes 1 KiB per second.

The proxy is the gateway's egress proxy (corral.gateway.egress.EgressProxy) in a process of
its own, with the client's address (127.0.0.1) as a session pod's and a spec whose
`egress` CIDR opens the loopback upstream: the same code path as in `corral gateway`
minus the informers that fill its index (and with the per-session limit of open
tunnels lifted: every tunnel here comes from one address, so from one "session"). The
upstream is a process of its own too; the client is this process (blocking sockets). All
three share the machine's cores.
Results: docs/benchmarks/egress.json and docs/egress-benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


# --- the processes -----------------------------------------------------------------------


async def _upstream(port: int) -> None:
    """`S<bytes>\\n`: send that many bytes; `R<bytes>\\n`: read that many, answer `ok`;
    `E\\n`: echo until EOF."""
    payload = memoryview(b"x" * CHUNK)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).decode().strip()
            if line.startswith("S"):
                left = int(line[1:])
                while left > 0:
                    writer.write(payload[: min(CHUNK, left)])
                    left -= min(CHUNK, left)
                    await writer.drain()
            elif line.startswith("R"):
                left = int(line[1:])
                while left > 0:
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    left -= len(data)
                writer.write(b"ok\n")
                await writer.drain()
            else:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=2048)
    print("ready", flush=True)
    await server.serve_forever()


async def _proxy(port: int, upstream_port: int) -> None:
    from prometheus_client import CollectorRegistry

    from corral.gateway.egress import EgressMetrics, EgressProxy, EgressSettings
    from corral.gateway.egress_index import EgressIndex
    from corral.gateway.egress_report import RefusalReporter

    index = EgressIndex()
    index.on_session(
        "ADDED",
        {
            "metadata": {"namespace": "bench", "name": "bench", "uid": "bench"},
            "spec": {
                "network": {
                    "allowPublicHttps": False,
                    "egress": [{"cidr": "127.0.0.1/32", "ports": [{"port": upstream_port}]}],
                }
            },
        },
    )
    index.on_pod(
        "ADDED",
        {
            "metadata": {
                "namespace": "bench",
                "name": "bench-1",
                "ownerReferences": [{"uid": "bench", "controller": True}],
            },
            "status": {"phase": "Running", "podIP": "127.0.0.1"},
        },
    )

    async def post(*_: Any) -> None:
        return None

    proxy = EgressProxy(
        index,
        EgressMetrics(CollectorRegistry()),
        RefusalReporter(post),
        settings=EgressSettings(max_tunnels_per_session=100_000),
    )
    server = await proxy.start("127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


def _spawn(role: str, *ports: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT}"}
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.egress", f"--{role}", *map(str, ports)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {role} did not start")
    return child


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the client --------------------------------------------------------------------------


def _open(proxy_port: int | None, upstream_port: int) -> socket.socket:
    if proxy_port is None:
        return socket.create_connection(("127.0.0.1", upstream_port))
    sock = socket.create_connection(("127.0.0.1", proxy_port))
    sock.sendall(f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the proxy closed the connection")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    return sock


def download(proxy_port: int | None, upstream_port: int, size: int) -> float:
    """Bytes per second from the upstream to this client."""
    sock = _open(proxy_port, upstream_port)
    buffer = bytearray(CHUNK)
    started = time.perf_counter()
    sock.sendall(f"S{size}\n".encode())
    got = 0
    while got < size:
        n = sock.recv_into(buffer)
        if n == 0:
            raise RuntimeError(f"EOF after {got} bytes")
        got += n
    seconds = time.perf_counter() - started
    sock.close()
    return size / seconds


def upload(proxy_port: int | None, upstream_port: int, size: int) -> float:
    """Bytes per second from this client to the upstream (until it says it has them all)."""
    sock = _open(proxy_port, upstream_port)
    payload = memoryview(b"y" * CHUNK)
    started = time.perf_counter()
    sock.sendall(f"R{size}\n".encode())
    left = size
    while left > 0:
        sock.sendall(payload[: min(CHUNK, left)])
        left -= min(CHUNK, left)
    if not sock.recv(16).startswith(b"ok"):
        raise RuntimeError("the upstream did not confirm")
    seconds = time.perf_counter() - started
    sock.close()
    return size / seconds


def throughput(
    proxy_pid: int, proxy_port: int, upstream_port: int, size: int, rounds: int
) -> dict[str, Any]:
    runs: dict[str, list[float]] = {k: [] for k in ("down_direct", "down_proxy", "up_direct",
                                                     "up_proxy")}  # fmt: skip
    download(proxy_port, upstream_port, 16 * CHUNK)  # warm up
    proxy_cpu = 0.0
    for _ in range(rounds):
        runs["down_direct"].append(download(None, upstream_port, size))
        cpu0, _ = _proc_stat(proxy_pid)
        runs["down_proxy"].append(download(proxy_port, upstream_port, size))
        cpu1, _ = _proc_stat(proxy_pid)
        runs["up_direct"].append(upload(None, upstream_port, size))
        cpu2, _ = _proc_stat(proxy_pid)
        runs["up_proxy"].append(upload(proxy_port, upstream_port, size))
        cpu3, _ = _proc_stat(proxy_pid)
        proxy_cpu += (cpu1 - cpu0) + (cpu3 - cpu2)
    mib = {k: [round(v / 2**20, 1) for v in values] for k, values in runs.items()}
    median = {k: statistics.median(v) for k, v in mib.items()}
    return {
        "bytes_per_run": size,
        "runs_mib_per_s": mib,
        "median_mib_per_s": median,
        "ratio_down": round(median["down_proxy"] / median["down_direct"], 3),
        "ratio_up": round(median["up_proxy"] / median["up_direct"], 3),
        # What the proxy costs whatever else runs on the machine.
        "proxy_cpu_seconds_per_gib": round(proxy_cpu / (2 * rounds * size / 2**30), 3),
    }


async def tunnels(proxy_pid: int, proxy_port: int, upstream_port: int, count: int,
                  seconds: float) -> dict[str, Any]:  # fmt: skip
    """`count` tunnels open at once: the proxy's RSS and CPU at rest and while each echoes
    1 KiB a second."""
    _cpu0, rss_before = _proc_stat(proxy_pid)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    started = time.perf_counter()
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.write(b"E\n")
        streams.append((reader, writer))
    open_seconds = time.perf_counter() - started
    await asyncio.sleep(2)
    cpu_rest0, rss_rest = _proc_stat(proxy_pid)
    await asyncio.sleep(seconds)
    cpu_rest1, _ = _proc_stat(proxy_pid)
    message = b"z" * 1024
    stop = time.perf_counter() + seconds
    echoed = 0

    async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal echoed
        while time.perf_counter() < stop:
            writer.write(message)
            await reader.readexactly(len(message))
            echoed += len(message)
            await asyncio.sleep(1)

    cpu_flow0, _ = _proc_stat(proxy_pid)
    flow_started = time.perf_counter()
    await asyncio.gather(*(ping(r, w) for r, w in streams))
    flow_seconds = time.perf_counter() - flow_started
    cpu_flow1, rss_flow = _proc_stat(proxy_pid)
    for _reader, writer in streams:
        writer.close()
    return {
        "tunnels": count,
        "open_seconds": round(open_seconds, 2),
        "rss_before_mb": round(rss_before / 1e6, 1),
        "rss_at_rest_mb": round(rss_rest / 1e6, 1),
        "rss_flowing_mb": round(rss_flow / 1e6, 1),
        "cpu_at_rest_percent": round(100 * (cpu_rest1 - cpu_rest0) / seconds, 1),
        "cpu_flowing_percent": round(100 * (cpu_flow1 - cpu_flow0) / flow_seconds, 1),
        "echoed_kib": echoed // 1024,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    upstream_port, proxy_port = _free_port(), _free_port()
    upstream = _spawn("upstream", upstream_port)
    proxy = _spawn("proxy", proxy_port, upstream_port)
    try:
        results: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "note": args.note,
            "throughput": throughput(
                proxy.pid, proxy_port, upstream_port, args.mib * 2**20, args.rounds
            ),
        }
        results["tunnels"] = asyncio.run(
            tunnels(proxy.pid, proxy_port, upstream_port, args.tunnels, args.seconds)
        )
    finally:
        for child in (proxy, upstream):
            child.terminate()
            child.wait(10)
    return results


def report(results: dict[str, Any]) -> str:
    t, n = results["throughput"], results["tunnels"]
    m = t["median_mib_per_s"]
    return "\n".join(
        [
            "# Egress proxy benchmarks",
            "",
            "Produced by `python -m bench.egress` (see its docstring for what is measured);",
            f"raw numbers in [benchmarks/egress.json](benchmarks/egress.json). Run "
            f"{results['when']} on {results['cpus']} shared cores. {results['note']}",
            "",
            "## CONNECT tunnel throughput (one proxy process, loopback)",
            "",
            f"{t['bytes_per_run'] // 2**20} MiB per run, median of "
            f"{len(t['runs_mib_per_s']['down_direct'])} interleaved runs (MiB/s):",
            "",
            "| direction | straight | through the proxy | ratio (target >= 0.8) |",
            "|---|---|---|---|",
            f"| upstream -> client | {m['down_direct']} | {m['down_proxy']} | {t['ratio_down']} |",
            f"| client -> upstream | {m['up_direct']} | {m['up_proxy']} | {t['ratio_up']} |",
            "",
            f"Every run: {json.dumps(t['runs_mib_per_s'])}",
            "",
            f"The proxy process's CPU per GiB carried: {t['proxy_cpu_seconds_per_gib']} s "
            "(independent of what else the machine runs).",
            "",
            f"## {n['tunnels']:,} concurrent tunnels through one proxy process",
            "",
            "| | value |",
            "|---|---|",
            f"| time to open them all (one client, one after another) | {n['open_seconds']} s |",
            f"| proxy RSS before / at rest / while flowing | {n['rss_before_mb']} / "
            f"{n['rss_at_rest_mb']} / {n['rss_flowing_mb']} MB |",
            f"| proxy CPU at rest | {n['cpu_at_rest_percent']} % of a core |",
            f"| proxy CPU while each tunnel echoes 1 KiB/s | {n['cpu_flowing_percent']} % of a "
            "core |",
            f"| echoed | {n['echoed_kib']} KiB |",
            "",
        ]
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB per throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "egress.json")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--proxy", type=int, nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.upstream:
        _raise_fd_limit()
        asyncio.run(_upstream(arguments.upstream))
    elif arguments.proxy:
        _raise_fd_limit()
        asyncio.run(_proxy(*arguments.proxy))
    else:
        measured = main(arguments)
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(measured, indent=2) + "\n")
        (ROOT / "docs" / "egress-benchmarks.md").write_text(report(measured))
        print(report(measured))
