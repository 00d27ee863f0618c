"""Egress proxy benchmarks, side by side in one run, on loopback.

    python -m bench.egress                     # 1 GiB x 3 each way, 1,000 tunnels
    python -m bench.egress --mib 256 --tunnels 200
    python -m bench.egress --baseline /tmp/old   # also an older tree's proxy, same rounds

1. CONNECT tunnel throughput: bytes from an upstream to a client, and from a client to an
   upstream, straight and through the egress proxy, interleaved, median of the rounds.
   Target: through the proxy >= 0.8x straight. With `--baseline DIR` (a checkout of another
   commit, e.g. `git worktree add /tmp/old HEAD~1`), that tree's proxy is measured in the
   same rounds too, so a change to the relay is judged against the same machine load.
2. 1,000 concurrent tunnels through one proxy process: its RSS and CPU once they are open
   (at rest) and while each tunnel echoes 1 KiB per second.

The proxy is the gateway's egress proxy (corral.gateway.egress.EgressProxy) in a process of
its own, with the client's address (127.0.0.1) as a session pod's and a spec whose
`egress` CIDR opens the loopback upstream: the same code path as in `corral gateway`
minus the informers that fill its index (and with the per-session limit of open
tunnels lifted: every tunnel here comes from one address, so from one "session"). The
upstream is a process of its own too; the client is this process (blocking sockets).

Each round runs in two CPU layouts (`--layouts`):
- `shared`: all three processes share every core, as on this test machine, where the proxy's
  CPU is taken from the two endpoints it sits between.
- `pinned`: the client and the upstream share CPU 0, the proxies get CPU 1. This is the
  deployed shape: the gateway's egress proxy runs in pods of its own with their own CPU,
  so what it spends is not the session's or the remote server's; the endpoints get the
  same CPU straight and through the proxy.
Results: docs/benchmarks/egress.json and docs/egress-benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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


def _spawn(role: str, *ports: int, tree: Path = ROOT) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'operator'}:{ROOT}"}
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


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# CPU layouts: None leaves affinity alone; otherwise (endpoints' CPUs, proxies' CPUs).
LAYOUTS: dict[str, tuple[set[int], set[int]] | None] = {"shared": None, "pinned": ({0}, {1})}


def _suffix(layout: str) -> str:
    """What a layout adds to a run's key: nothing for shared (the first layout measured)."""
    return "" if layout == "shared" else f"_{layout}"


def _place(layout: tuple[set[int], set[int]] | None, upstream_pid: int,
           proxy_pids: list[int]) -> None:  # fmt: skip
    every = set(range(os.cpu_count() or 1))
    endpoints, proxies = layout if layout is not None else (every, every)
    for pid in (0, upstream_pid):  # 0: this process, the client
        os.sched_setaffinity(pid, endpoints)
    for pid in proxy_pids:
        os.sched_setaffinity(pid, proxies)


def throughput(
    proxies: dict[str, tuple[int, int]], upstream_pid: int, upstream_port: int, size: int,
    rounds: int, layouts: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`proxies`: name -> (pid, port); "proxy" is this tree's, "baseline" another's.

    Besides MiB/s, the CPU seconds per GiB of the client (this process), the upstream and
    the proxy in every run: on a saturated machine throughput is CPU share over CPU per
    byte, so `cpu_ratio` (the direct runs' CPU over the proxied runs') is what the ratio
    tends to whatever the load.
    """
    layouts = layouts or ["shared"]
    runs: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    for _pid, port in proxies.values():
        download(port, upstream_port, 16 * CHUNK)  # warm up
    gib = size / 2**30
    proxy_pids = [pid for pid, _port in proxies.values()]
    for _round, layout in itertools.product(range(rounds), layouts):
        _place(LAYOUTS[layout], upstream_pid, proxy_pids)
        suffix = _suffix(layout)
        for direction, move in (("down", download), ("up", upload)):
            for name, (pid, port) in {"direct": (0, None), **proxies}.items():
                key = f"{direction}_{name}{suffix}"
                before = (_own_cpu(), _proc_stat(upstream_pid)[0], _proc_stat(pid)[0] if pid else 0)
                runs.setdefault(key, []).append(move(port, upstream_port, size))
                after = (_own_cpu(), _proc_stat(upstream_pid)[0], _proc_stat(pid)[0] if pid else 0)
                for part, t0, t1 in zip(
                    ("client", "upstream", "proxy"), before, after, strict=True
                ):
                    cpu.setdefault(key, {}).setdefault(part, []).append((t1 - t0) / gib)
    _place(None, upstream_pid, proxy_pids)
    mib = {k: [round(v / 2**20, 1) for v in values] for k, values in runs.items()}
    median = {k: round(statistics.median(v), 1) for k, v in mib.items()}
    cpu_median = {
        key: {part: round(statistics.median(v), 3) for part, v in parts.items()}
        for key, parts in cpu.items()
    }
    results: dict[str, Any] = {"bytes_per_run": size, "layouts": layouts,
                               "runs_mib_per_s": mib, "median_mib_per_s": median,
                               "cpu_seconds_per_gib": cpu_median}  # fmt: skip
    for name in proxies:
        prefix = "" if name == "proxy" else f"{name}_"
        for layout in layouts:
            suffix = _suffix(layout)
            for direction in ("down", "up"):
                proxied_key = f"{direction}_{name}{suffix}"
                direct_key = f"{direction}_direct{suffix}"
                ratio = median[proxied_key] / median[direct_key]
                results[f"{prefix}ratio_{direction}{suffix}"] = round(ratio, 3)
                direct = sum(cpu_median[direct_key].values())
                proxied = sum(cpu_median[proxied_key].values())
                results[f"{prefix}cpu_ratio_{direction}{suffix}"] = round(direct / proxied, 3)
        # What the proxy costs whatever else runs on the machine (every layout measured).
        results[f"{prefix}proxy_cpu_seconds_per_gib"] = round(
            statistics.median(
                cpu_median[f"{d}_{name}{_suffix(layout)}"]["proxy"]
                for d in ("down", "up")
                for layout in layouts
            ),
            3,
        )
    return results


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


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces these numbers (the note and output path aside)."""
    words = ["python -m bench.egress", f"--mib {args.mib}", f"--rounds {args.rounds}"]
    words += [f"--tunnels {args.tunnels}", f"--seconds {args.seconds:g}"]
    words.append(f"--layouts {','.join(args.layouts)}")
    if args.baseline is not None:
        words.append("--baseline <baseline>")  # another tree, wherever it was unpacked
    return " ".join(words)


def main(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    upstream_port, proxy_port = _free_port(), _free_port()
    upstream = _spawn("upstream", upstream_port)
    proxy = _spawn("proxy", proxy_port, upstream_port)
    children = [proxy, upstream]
    proxies = {"proxy": (proxy.pid, proxy_port)}
    try:
        if args.baseline is not None:
            baseline_port = _free_port()
            baseline = _spawn("proxy", baseline_port, upstream_port, tree=args.baseline)
            children.append(baseline)
            proxies["baseline"] = (baseline.pid, baseline_port)
        results: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "command": _command(args),
            "note": args.note,
            "throughput": throughput(
                proxies,
                upstream.pid,
                upstream_port,
                args.mib * 2**20,
                args.rounds,
                args.layouts,
            ),
        }
        results["tunnels"] = asyncio.run(
            tunnels(proxy.pid, proxy_port, upstream_port, args.tunnels, args.seconds)
        )
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
    return results


def _throughput_rows(t: dict[str, Any]) -> list[str]:
    m = t["median_mib_per_s"]
    rows = []
    for layout in t.get("layouts", ["shared"]):
        suffix = _suffix(layout)
        for direction, label in (("down", "upstream -> client"), ("up", "client -> upstream")):
            for name in ("proxy", "baseline"):
                if f"{direction}_{name}{suffix}" not in m:
                    continue
                prefix = "" if name == "proxy" else f"{name}_"
                rows.append(
                    f"| {layout} | {label} | {'this tree' if name == 'proxy' else 'baseline'} "
                    f"| {m[f'{direction}_direct{suffix}']} | {m[f'{direction}_{name}{suffix}']} "
                    f"| {t[f'{prefix}ratio_{direction}{suffix}']} "
                    f"| {t[f'{prefix}cpu_ratio_{direction}{suffix}']} |"
                )
    return rows


def report(results: dict[str, Any]) -> str:
    t, n = results["throughput"], results["tunnels"]
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
            f"Command: `{results.get('command', 'python -m bench.egress')}`; load average at "
            f"start {results.get('load_average_at_start', '?')}. "
            f"{t['bytes_per_run'] // 2**20} MiB per run, median of "
            f"{len(next(iter(t['runs_mib_per_s'].values())))} interleaved runs (MiB/s). "
            "CPU layouts: "
            "*shared*, the three processes on every core; *pinned*, client and upstream on "
            "CPU 0 and the proxy on CPU 1, as deployed (the proxy in the gateway's own pods):",
            "",
            "| CPU layout | direction | proxy | straight | through the proxy "
            "| ratio (target >= 0.8) | CPU ratio |",
            "|---|---|---|---|---|---|---|",
            *_throughput_rows(t),
            "",
            "CPU ratio: CPU seconds per GiB of client + upstream (+ proxy) straight, over the "
            "same through the proxy; on a saturated machine the throughput ratio tends to it "
            "(see [egress.md](egress.md#benchmarks)). CPU seconds per GiB, median:",
            "",
            "| run | client | upstream | proxy |",
            "|---|---|---|---|",
            *(
                f"| {key} | {c['client']} | {c['upstream']} | {c['proxy']} |"
                for key, c in t["cpu_seconds_per_gib"].items()
            ),
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
    parser.add_argument(
        "--layouts",
        type=lambda text: text.split(","),
        default=["shared", "pinned"] if (os.cpu_count() or 1) >= 2 else ["shared"],
        help="CPU layouts to run each round in, of: " + ", ".join(LAYOUTS),
    )
    parser.add_argument(
        "--baseline", type=Path, help="another source tree whose proxy runs in the same rounds"
    )
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
