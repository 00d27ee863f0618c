"""Gateway benchmarks, side by side in one run, against the local control plane.

    python -m bench.gateway                 # 2,000 messages, 1,000 streams, 1,000 requests
    python -m bench.gateway --messages 50 --streams 200 --quick

1. Proxy overhead: time to the first event and to `result` of a streamed message, straight
   to a runner (its built-in fake model) and through `corral gateway`, interleaved. 2,000
   by default: with 400, p99 is the 4th-worst message, and one stall of the runner's
   (100-200 ms on a shared machine, on either path) swings the added p99 by as much.
2. Open streams: N concurrent SSE streams through one gateway process to a ticking upstream
   (one event per stream per second), gateway RSS and CPU at rest and while events flow.
3. Auth cost: TokenReviews and SubjectAccessReviews per 1,000 requests from 10 users.

The gateway runs as a real subprocess (`corral gateway`) with a kubeconfig; the sessions
and pods are real API objects pointing at loopback (corral.testing.gateway). Results go to
docs/benchmarks/gateway.json and docs/gateway-benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bench.paired import side_by_side
from corral.api import runtime
from corral.api.crd import crd_yaml
from corral.api.tokens import runner_credential
from corral.cluster import control_plane, pki
from corral.testing.gateway import World, free_port, make_namespace, start_local_runner

ROOT = Path(__file__).resolve().parent.parent
KEY = os.urandom(24).hex().encode()


def _proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


class GatewayProcess:
    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, max_streams: int) -> None:
        key_file = workdir / "gateway.key"
        key_file.write_bytes(KEY)
        self.port, self.admin_port = free_port(), free_port()
        self.log = (workdir / "gateway.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "gateway", "--kubeconfig", str(kubeconfig),
             "--key-file", str(key_file), "--namespace", namespace, "--host", "127.0.0.1",
             "--port", str(self.port), "--admin-port", str(self.admin_port),
             "--max-streams", str(max_streams), "--rate", "100000", "--burst", "100000",
             "--log-level", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("gateway not ready")

    async def metric(self, name: str) -> dict[str, float]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.admin_port}/metrics") as r,
        ):
            text = await r.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
            if match:
                found[match.group(1) or ""] = float(match.group(2))
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self.log.close()


async def _message(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    async with http.post(url, json={"text": "benchmark"}, headers=headers) as r:
        assert r.status == 200, (r.status, await r.text())
        async for raw in r.content:
            if raw.startswith(b"data: "):
                if first is None:
                    first = time.perf_counter() - started
                if b'"type": "result"' in raw or b'"type":"result"' in raw:
                    break
    assert first is not None
    return first * 1000, (time.perf_counter() - started) * 1000


async def proxy_overhead(world: World, gateway: GatewayProcess, runner_port: int,
                         token: str, messages: int) -> dict[str, Any]:  # fmt: skip
    direct_url = f"http://127.0.0.1:{runner_port}/v1/messages"
    via_url = f"{gateway.url}/sessions/{world.namespace}/direct/v1/messages"
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        return await side_by_side(
            lambda: _message(http, direct_url, {}),
            lambda: _message(http, via_url, auth),
            proxied_label="gateway",
            end_label="result",
            warmup=5,
            rounds=messages,
        )


async def ticker_app(period: float, flowing: asyncio.Event) -> web.Application:
    """A stand-in runner for the stream benchmark: one SSE event per period while `flowing`."""

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await flowing.wait()
                await response.write(b'data: {"type": "text_delta", "text": "tick"}\n\n')
                await asyncio.sleep(period)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


async def open_streams(world: World, gateway: GatewayProcess, token: str, count: int,
                       seconds: float) -> dict[str, Any]:  # fmt: skip
    flowing = asyncio.Event()
    app_runner = web.AppRunner(await ticker_app(1.0, flowing))
    await app_runner.setup()
    port = free_port()
    await web.TCPSite(app_runner, "127.0.0.1", port).start()
    uid = world.create_session("ticker")
    world.set_status("ticker", {"phase": "Running"})
    world.runner_port = port
    world.create_ready_pod("ticker", uid)
    await asyncio.sleep(2)
    url = f"{gateway.url}/sessions/{world.namespace}/ticker/v1/messages"
    auth = {"Authorization": f"Bearer {token}"}
    received = 0

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal received
        async with http.post(url, json={"text": "tick"}, headers=auth) as r:
            assert r.status == 200, r.status
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    received += 1

    cpu0, rss0 = _proc_stat(gateway.proc.pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout()) as http:
        tasks = [asyncio.create_task(one(http)) for _ in range(count)]
        for _ in range(600):
            opened = (await gateway.metric("corral_gateway_open_streams")).get("", 0)
            if opened >= count:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        cpu1, rss_rest = _proc_stat(gateway.proc.pid)
        await asyncio.sleep(seconds)
        cpu2, rss_rest2 = _proc_stat(gateway.proc.pid)
        flowing.set()
        before = received
        await asyncio.sleep(seconds)
        cpu3, rss_flow = _proc_stat(gateway.proc.pid)
        events = received - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await app_runner.cleanup()
    mib = 1024 * 1024
    return {
        "streams": count,
        "opened": opened,
        "rss_before_mib": rss0 / mib,
        "rss_at_rest_mib": max(rss_rest, rss_rest2) / mib,
        "rss_flowing_mib": rss_flow / mib,
        "cpu_at_rest_percent": (cpu2 - cpu1) / seconds * 100,
        "cpu_flowing_percent": (cpu3 - cpu2) / seconds * 100,
        "events_per_second": events / seconds,
        "cpu_to_open_seconds": cpu1 - cpu0,
    }


async def auth_cost(world: World, gateway: GatewayProcess, tokens: list[str],
                    requests: int) -> dict[str, Any]:  # fmt: skip
    before = await gateway.metric("corral_gateway_reviews_total")
    url = f"{gateway.url}/sessions/{world.namespace}/direct/v1/status"
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            auth = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            async with http.get(url, headers=auth) as r:
                assert r.status == 200, r.status
                await r.read()

        for start in range(0, requests, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(requests, start + 50))))
    elapsed = time.perf_counter() - started
    after = await gateway.metric("corral_gateway_reviews_total")

    def delta(kind: str) -> float:
        key = f'{{kind="{kind}"}}'
        return after.get(key, 0) - before.get(key, 0)

    return {
        "requests": requests,
        "users": len(tokens),
        "token_reviews": delta("token"),
        "access_reviews": delta("access"),
        "seconds": elapsed,
    }


async def main(args: argparse.Namespace, layout: control_plane.Layout) -> dict[str, Any]:
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    control_plane.kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_yaml()
    )
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    namespace = f"bench-gw-{uuid.uuid4().hex[:5]}"
    make_namespace(k8s.CoreV1Api(api), namespace)
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-gw-"))
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.gateway", *sys.argv[1:]]),
        "note": args.note,
    }
    runner = None
    gateway = None
    try:
        world = World(api, namespace, 0)
        uid = world.create_session("direct")
        credential = runner_credential(KEY, namespace, "direct", uid)
        runner = start_local_runner(
            workdir / "runner",
            {"pattern": "LongRunning"},
            {runtime.ENV_GATEWAY_CREDENTIAL: credential},
        )
        world.runner_port = runner.port
        world.set_status("direct", {"phase": "Running"})
        world.create_ready_pod("direct", uid)
        tokens = [world.user(f"user{i}", None, ["create", "get"]) for i in range(args.users)]
        gateway = GatewayProcess(kubeconfig, namespace, workdir, max_streams=args.streams + 10)
        await gateway.wait_ready()
        await asyncio.sleep(1)
        results["proxy"] = await proxy_overhead(world, gateway, runner.port, tokens[0],
                                                args.messages)  # fmt: skip
        print("proxy:", {k: v for k, v in results["proxy"].items() if k != "raw"}, flush=True)
        results["auth"] = await auth_cost(world, gateway, tokens, args.requests)
        print("auth:", results["auth"], flush=True)
        results["streams"] = await open_streams(world, gateway, tokens[0], args.streams,
                                                args.seconds)  # fmt: skip
        print("streams:", results["streams"], flush=True)
    finally:
        if gateway:
            gateway.stop()
        if runner:
            runner.stop()
        k8s.CoreV1Api(api).delete_namespace(namespace, propagation_policy="Background")
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "gateway.json")
    parser.add_argument("--note", default="", help="a line about the run for the report")
    parser.add_argument(
        "--no-report", dest="report", action="store_false", help="skip docs/gateway-benchmarks.md"
    )
    return parser.parse_args()


def report(results: dict[str, Any]) -> str:
    """docs/gateway-benchmarks.md from one run's results."""
    p, a, s = results["proxy"], results["auth"], results["streams"]
    ms = "{:.1f} ms".format
    lines = [
        "# Gateway benchmarks",
        "",
        f"Command: `{results['command']}` (numbers: docs/benchmarks/gateway.json). One run, "
        "the paths interleaved message by message, on the shared 2-core machine.",
        "",
        f"## Proxy overhead ({p['messages']} streamed messages each way, fake model)",
        "",
        "| | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 | added p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, label in (("first", "first event"), ("result", "result")):
        lines.append(
            f"| {label} | {ms(p[f'direct_{kind}_p50_ms'])} | {ms(p[f'gateway_{kind}_p50_ms'])} "
            f"| {ms(p[f'added_{kind}_p50_ms'])} | {ms(p[f'direct_{kind}_p99_ms'])} "
            f"| {ms(p[f'gateway_{kind}_p99_ms'])} | {ms(p[f'added_{kind}_p99_ms'])} |"
        )
    lines += [
        "",
        f"## {s['streams']} concurrent SSE streams through one gateway process",
        "",
        "| | RSS | CPU |",
        "|---|---|---|",
        f"| before | {s['rss_before_mib']:.0f} MiB | |",
        f"| streams open, no events | {s['rss_at_rest_mib']:.0f} MiB "
        f"| {s['cpu_at_rest_percent']:.1f} % of a core |",
        f"| {s['events_per_second']:.0f} events/s flowing | {s['rss_flowing_mib']:.0f} MiB "
        f"| {s['cpu_flowing_percent']:.1f} % of a core |",
        "",
        f"## Auth cost ({a['requests']} requests from {a['users']} users, 10 s cache)",
        "",
        f"{a['token_reviews']:.0f} TokenReviews and {a['access_reviews']:.0f} "
        f"SubjectAccessReviews in {a['seconds']:.1f} s: "
        f"{1000 * (a['token_reviews'] + a['access_reviews']) / a['requests']:.0f} reviews "
        "per 1,000 requests.",
        "",
        "## Targets (issue 13)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        _target("added p50 to the first event ≤ 2 ms", p["added_first_p50_ms"], 2.0, "ms"),
        _target("added p99 to the first event ≤ 10 ms", p["added_first_p99_ms"], 10.0, "ms"),
        _target("added p50 to `result` ≤ 2 ms", p["added_result_p50_ms"], 2.0, "ms"),
        _target("added p99 to `result` ≤ 10 ms", p["added_result_p99_ms"], 10.0, "ms"),
        _target(
            "paired: median added within a round, first event ≤ 2 ms",
            p["added_first_paired_p50_ms"],
            2.0,
            "ms",
        ),
        _target(
            "paired: median added within a round, `result` ≤ 2 ms",
            p["added_result_paired_p50_ms"],
            2.0,
            "ms",
        ),
        _target(
            "RSS with 1,000 open streams ≤ 200 MB", s["rss_flowing_mib"] * MIB_TO_MB, 200, "MB"
        ),
        "",
    ]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    return "\n".join(lines)


MIB_TO_MB = 1.048576


def _target(what: str, value: float, limit: float, unit: str) -> str:
    return f"| {what} | {value:.1f} {unit} | {'met' if value <= limit else 'not met'} |"


if __name__ == "__main__":
    arguments = parse()
    with control_plane.running() as cluster:
        outcome = asyncio.run(main(arguments, cluster))
    arguments.out.write_text(json.dumps(outcome, indent=1))
    if arguments.report:
        (ROOT / "docs" / "gateway-benchmarks.md").write_text(report(outcome))
    print(f"wrote {arguments.out}")
