"""Run every benchmark against the local cluster and write docs/benchmarks.md.

    python -m bench.run                      # full run: 100, 1,000 and 5,000 sessions
    python -m bench.run --sizes 100 --idle 500 --quick

The operator runs as a real subprocess (`corral operator`); the API server, KWOK nodes and
scheduler are the local control plane (`corral cluster up`), with extra KWOK nodes added
so that 5,000 pods fit. Results: docs/benchmarks.md (tables), docs/benchmarks/*.png
(plots), docs/benchmarks/raw.json (every number).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.kube import client_for, kwok_nodes
from bench.scenarios import (
    activity_cost,
    api_costs,
    at_rest,
    burst,
    drop_namespace,
    idle_precision,
    make_namespace,
    wake_latency,
)
from corral.api.crd import crd_yaml
from corral.cluster import control_plane, pki
from corral.testing.operator import OperatorProcess, kwok_operator_config

ROOT = Path(__file__).resolve().parent.parent
BENCH_NODES = 24  # x 250 pods: room for a 5,000 burst plus stragglers


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


async def main(args: argparse.Namespace, layout: control_plane.Layout) -> None:
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    crd = crd_yaml()
    control_plane.kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd
    )
    with kwok_nodes(layout, BENCH_NODES):
        client = client_for(kubeconfig, max_connections=64)
        run_id = time.strftime("%H%M%S")
        op_namespace = f"bench-{run_id}-system"
        await make_namespace(client, op_namespace)
        config = kwok_operator_config(op_namespace)
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            config=config,
            workdir=ROOT / ".bench",
            namespaces=[f"bench-{run_id}-*"],
            lease_name=f"bench-{run_id}",
            identity=f"bench-{run_id}",
            workers=args.workers,
        ).start()
        operator.wait_leader()
        assert operator.proc is not None
        pids = {
            "operator": operator.proc.pid,
            **{
                spec.name: control_plane._pid(layout, spec) or 0
                for spec in control_plane.COMPONENTS
            },
        }
        results: dict[str, Any] = {
            "machine": machine(),
            "command": report.this_command(),
            "bursts": [],
            "at_rest": [],
        }
        try:
            for size in [n for n in args.sizes if n > 0] if "bursts" in args.only else []:
                for mode in args.modes:
                    namespace = f"bench-{run_id}-{mode}-{size}"
                    await make_namespace(client, namespace)
                    result = await burst(client, namespace, size, mode, config, pids)
                    print(
                        f"burst {mode} {size}: {result.sessions_per_second:.1f}/s, "
                        f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, "
                        f"all Running in {result.running_seconds:.1f}s, "
                        f"cpu {result.cpu_seconds}",
                        flush=True,
                    )
                    results["bursts"].append(
                        {**result.__dict__, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}
                    )
                    if mode == "operator" and size >= 1000:
                        rest = await at_rest(operator, size)
                        print(f"at rest with {size}: {rest}", flush=True)
                        results["at_rest"].append(rest)
                    await drop_namespace(client, namespace)
            if args.paced and "bursts" in args.only:
                # The operator's reaction time when the system is not saturated: the same
                # sessions, paced at a share of the floor's measured throughput.
                floor = next(
                    (
                        b
                        for b in results["bursts"]
                        if b["mode"] == "floor" and b["count"] == args.paced
                    ),
                    None,
                )
                rate = round(floor["sessions_per_second"] * 0.6, 1) if floor else args.paced_rate
                namespace = f"bench-{run_id}-paced-{args.paced}"
                await make_namespace(client, namespace)
                paced = await burst(
                    client, namespace, args.paced, "operator", config, pids, rate=rate
                )
                print(
                    f"paced operator {args.paced} at {rate}/s: "
                    f"p50 {paced.p50_ms:.0f} ms, p99 {paced.p99_ms:.0f} ms",
                    flush=True,
                )
                results["bursts"].append(
                    {**paced.__dict__, "p50_ms": paced.p50_ms, "p99_ms": paced.p99_ms}
                )
                await drop_namespace(client, namespace)
            if args.bursts_only:
                path = ROOT / ".bench" / f"bursts-{run_id}.json"
                path.write_text(json.dumps(results, indent=1))
                print(f"bursts only: results in {path}", flush=True)
                return
            if "costs" in args.only:
                namespace = f"bench-{run_id}-costs"
                await make_namespace(client, namespace)
                results["api_costs"] = await api_costs(
                    client, operator, namespace, args.cost_sessions
                )
                print(f"api costs: {json.dumps(results['api_costs'], indent=1)}", flush=True)
                await drop_namespace(client, namespace)
            if "activity" in args.only:
                namespace = f"bench-{run_id}-activity"
                await make_namespace(client, namespace)
                results["activity"] = await activity_cost(
                    client, operator, namespace, args.activity
                )
                print(f"activity: {results['activity']}", flush=True)
                await drop_namespace(client, namespace)
            if "idle" in args.only:
                namespace = f"bench-{run_id}-idle"
                await make_namespace(client, namespace)
                results["idle"] = await idle_precision(
                    client, namespace, args.idle, base=args.idle_base, spread=args.idle_spread
                )
                print(
                    f"idle: p50 {results['idle']['p50_s']}s p99 {results['idle']['p99_s']}s",
                    flush=True,
                )
                results["wake"] = await wake_latency(client, operator, namespace, args.wakes)
                print(
                    f"wake: p50 {results['wake']['p50_ms']} ms p99 {results['wake']['p99_ms']} ms",
                    flush=True,
                )
                await drop_namespace(client, namespace, limit=0)  # 5,000 sessions: GC in background
        finally:
            operator.stop()
            await client.close()
    out = ROOT / "docs"
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    raw = out / "benchmarks" / "raw.json"
    if args.merge and raw.exists():
        results = merge(json.loads(raw.read_text()), results)
    raw.write_text(json.dumps(results, indent=1))
    report.write(results, out)


def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A follow-up run's sections replace the same sections of the previous full run."""
    for key in ("api_costs", "activity", "idle", "wake"):
        if key in new:
            base[key] = new[key]
    replaced = {(b["mode"], b["count"], b.get("paced", False)) for b in new["bursts"]}
    base["bursts"] = [
        b for b in base["bursts"] if (b["mode"], b["count"], b.get("paced", False)) not in replaced
    ] + new["bursts"]
    counts = {r["sessions"] for r in new["at_rest"]}
    base["at_rest"] = [r for r in base["at_rest"] if r["sessions"] not in counts] + new["at_rest"]
    base.setdefault("follow_ups", []).append(new["command"])
    return base


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 5000]
    )
    parser.add_argument(
        "--idle", type=int, default=5000, help="Hybrid sessions in the idle benchmark"
    )
    parser.add_argument("--idle-base", type=int, default=60, help="shortest idle timeout (s)")
    parser.add_argument(
        "--idle-spread", type=int, default=60, help="timeouts spread over this many s"
    )
    parser.add_argument(
        "--wakes", type=int, default=1000, help="sessions woken in the wake benchmark"
    )
    parser.add_argument("--cost-sessions", type=int, default=50)
    parser.add_argument("--activity", type=int, default=1000, help="sessions reporting activity")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--bursts-only", action="store_true", help="skip costs, idle and wake")
    parser.add_argument(
        "--merge", action="store_true", help="update the sections this run measured in raw.json"
    )
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["floor", "operator"])
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=["bursts", "costs", "activity", "idle"],
        help="sections to run (idle includes wake)",
    )
    parser.add_argument("--paced", type=int, default=1000, help="size of the paced burst (0: none)")
    parser.add_argument("--paced-rate", type=float, default=30.0, help="rate without a floor run")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()  # first: `--help` or a wrong flag starts no cluster
    with control_plane.running() as cluster:
        asyncio.run(main(arguments, cluster))
