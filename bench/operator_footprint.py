"""Operator CPU per session and peak RSS at 1,000 sessions, operator trees side by side.

    python -m bench.operator_footprint --sessions 1000 --rate 30 \\
        --tree before=/tmp/corral-before/operator --tree after=operator

For each round and each tree (alternately, so load on the shared machine hits both alike):
a fresh operator process of that tree (`PYTHONPATH`), one burst (64 creates in flight) of
`--sessions` LongRunning sessions on KWOK nodes, or the same paced at `--rate` per second,
until every pod is Running and the operator has settled (no reconcile for 6 s). Figures:
the operator's CPU-seconds (user + system) from the first create to settled, per session,
its reconciles per session (its own count, `corral_reconcile_duration_seconds`), and its
peak RSS (VmHWM: the most it ever held, start-up included). The sessions' namespace
is deleted (and gone) before the next operator starts. Writes the raw numbers as JSON.

Each operator imports what its tree's image holds: the packages of pyproject.toml that the
tree's images/operator/requirements.txt leaves out cannot be imported in its process
(bench/image_site), as in the pod; a tree without that file gets every package.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import statistics
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from bench import report
from bench.kube import client_for, kwok_nodes
from bench.report import this_command
from bench.run import BENCH_NODES, machine
from bench.scenarios import _proc_times, burst, drop_namespace, make_namespace, wait_settled
from corral.api.crd import crd_yaml
from corral.cluster import control_plane, pki
from corral.testing.operator import OperatorProcess, kwok_operator_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "operator-footprint.json"
# Issue 19: operator CPU per session, and the peer controller's peak RSS at 1,000 sessions.
CPU_TARGET_MS = 5.0
RSS_TARGET_MB = 97.0
RAW = ROOT / "docs" / "benchmarks" / "raw.json"  # bench.run's: benchmarks.md is made from both


IMAGE_SITE = ROOT / "bench" / "image_site"


def _distribution(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    return canonicalize_name(Requirement(requirement).name)


def absent_from_image(tree: Path) -> list[str]:
    """Top-level modules of the packages the tree's operator image leaves out."""
    checkout = tree.parent
    recipe = checkout / "images" / "operator" / "requirements.txt"
    if not recipe.is_file():
        return []
    declared = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = {
        _distribution(line)
        for line in recipe.read_text().splitlines()
        if line.strip()[:1].isalpha()
    }
    left_out = {_distribution(d) for d in declared} - kept
    return sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(_distribution(d) in left_out for d in distributions)
    )


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


RECONCILE_CAUSES = ("change", "deadline", "status-write", "activity", "retry", "leadership")


def reconciles_by_cause(operator: OperatorProcess, sessions: int) -> dict[str, float]:
    """Per session, "<cause> <outcome>": {"deadline nothing": 1.0, ...}, from one scrape;
    empty for a tree older than `corral_reconciles_total` (session 25)."""
    with urllib.request.urlopen(f"{operator.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "corral_reconciles_total":
                counts[(sample.labels["cause"], sample.labels["outcome"])] = sample.value
    return {
        f"{cause} {outcome}": round(count / sessions, 2)
        for cause in RECONCILE_CAUSES
        for outcome in ("acted", "nothing", "failed")
        if (count := counts.get((cause, outcome), 0.0))
    }


async def one(
    kubeconfig: Path,
    tree: str,
    path: str,
    sessions: int,
    rate: float | None,
    tag: str,
    workers: int,
) -> dict[str, Any]:
    client = client_for(kubeconfig, max_connections=64)
    system = f"fp-{tag}-system"
    namespace = f"fp-{tag}-s"
    await make_namespace(client, system)
    config = kwok_operator_config(system)
    operator = OperatorProcess(
        kubeconfig=kubeconfig,
        config=config,
        workdir=ROOT / ".bench",
        namespaces=[f"fp-{tag}-*"],
        lease_name=f"fp-{tag}",
        workers=workers,
        identity=f"fp-{tag}",
        pythonpath=os.pathsep.join([path, str(IMAGE_SITE)]),
        env={"CORRAL_BENCH_ABSENT": ",".join(absent_from_image(Path(path)))},
        # One replica: on a loaded machine a missed Lease renewal would stall the burst.
        leader_election=False,
    ).start()
    try:
        assert operator.proc is not None
        pid = operator.proc.pid
        await make_namespace(client, namespace)
        load_before = load_average()
        cpu_before = _proc_times(pid)[0]
        result = await burst(client, namespace, sessions, "operator", config, rate=rate)
        await wait_settled(operator)
        cpu = _proc_times(pid)[0] - cpu_before
        reconciles = operator.metric("corral_reconcile_duration_seconds_count")
        by_cause = reconciles_by_cause(operator, sessions)
        row = {
            "tree": tree,
            "mode": "paced" if rate else "burst",
            "rate_per_second": rate,
            "sessions": sessions,
            "workers": workers,
            "operator_cpu_seconds": round(cpu, 2),
            "operator_cpu_ms_per_session": round(1000 * cpu / sessions, 2),
            "reconciles_per_session": round(reconciles / sessions, 2),
            **({"reconciles_per_session_by_cause": by_cause} if by_cause else {}),
            "operator_peak_rss_mb": peak_rss_mb(pid),
            "operator_rss_mb_settled": round(_proc_times(pid)[1] / 2**20, 1),
            "all_running_seconds": round(result.running_seconds, 1),
            "create_to_pod_p50_ms": round(result.p50_ms, 1),
            "load_average_1m": [load_before, load_average()],
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        operator.stop()
        # The next operator starts while the garbage collector may still be at it: its
        # watch filters those namespaces out, and trees alternate, so both bear it alike.
        await drop_namespace(client, namespace, limit=120)
        await drop_namespace(client, system, limit=0)
        await client.close()


async def main(args: argparse.Namespace, layout: control_plane.Layout) -> None:
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    control_plane.kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_yaml()
    )
    trees: dict[str, str] = args.trees
    rows: list[dict[str, Any]] = []
    run_id = time.strftime("%H%M%S")
    with kwok_nodes(layout, max(4, min(BENCH_NODES, args.sessions // 200))):
        for round_ in range(args.rounds):
            for rate in [None if mode == "burst" else args.rate for mode in args.modes]:
                for tree, path in trees.items():
                    tag = f"{run_id}-{round_}-{tree}-{'p' if rate else 'b'}"
                    rows.append(
                        await one(kubeconfig, tree, path, args.sessions, rate, tag, args.workers)
                    )
    summary = {
        f"{tree} {mode}": {
            key: statistics.median(r[key] for r in rows if r["tree"] == tree and r["mode"] == mode)
            for key in ("operator_cpu_ms_per_session", "operator_peak_rss_mb")
        }
        for tree in trees
        for mode in ("burst", "paced")
        if any(r["tree"] == tree and r["mode"] == mode for r in rows)
    }
    out = {
        "machine": machine(),
        "command": this_command(),
        "sessions": args.sessions,
        "rate_per_second": args.rate,
        "rounds": args.rounds,
        "workers": args.workers,
        "rows": rows,
        "median": summary,
        "notes": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    if args.out == OUT:
        report.write(json.loads(RAW.read_text()), ROOT / "docs")


def section(data: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section of a run's JSON."""
    rate = data["rate_per_second"]
    lines = [
        f"## Operator CPU and peak RSS per tree, {data['sessions']:,} sessions",
        "",
        "`python -m bench.operator_footprint` (one run, trees alternately, a fresh operator "
        "each): a burst (64 creates in flight) or the same sessions paced at "
        f"{rate:g}/s, with `--workers {data.get('workers', 64)}`, until every pod is Running "
        "and the operator settled. CPU is the "
        "operator's user + system seconds over that time, per session; peak RSS is its VmHWM. "
        "The machine's other users share the cores (1-minute load average before and after).",
        "",
        f"Footprint command: `{data['command']}`",
        "",
        "| tree | mode | CPU ms / session | reconciles / session | peak RSS | RSS settled "
        "| all Running after | create→Pod p50 | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        load = " → ".join(f"{x:g}" for x in r["load_average_1m"])
        lines.append(
            f"| {r['tree']} | {r['mode']} | {r['operator_cpu_ms_per_session']} "
            f"| {r.get('reconciles_per_session', '—')} "
            f"| {r['operator_peak_rss_mb']} MB | {r['operator_rss_mb_settled']} MB "
            f"| {r['all_running_seconds']} s | {r['create_to_pod_p50_ms']:.0f} ms | {load} |"
        )
    lines += ["", "Issue 19's targets, medians of the run:", ""]
    for name, median in data["median"].items():
        cpu, rss = median["operator_cpu_ms_per_session"], median["operator_peak_rss_mb"]
        lines.append(
            f"- {name}: {cpu:g} ms per session (target ≤ {CPU_TARGET_MS:g}: "
            f"{_verdict(cpu, CPU_TARGET_MS)}), peak RSS {rss:g} MB (target ≤ {RSS_TARGET_MB:g}, "
            f"the peer controller's: {_verdict(rss, RSS_TARGET_MB)})"
        )
    return [*lines, "", *data.get("notes", []), ""]


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"**not met**, {value - target:.1f} over"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=30.0, help="paced creates per second")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--workers",
        type=int,
        default=16,
        help="the operator's --workers (16: the chart's operator.workers; runs before session "
        "9 used 64, the test harness's default, which holds about 10 MB more at the peak)",
    )
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=["burst", "paced"], help="burst,paced"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of an operator source tree (the folder holding `corral`); repeatable",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph on what the numbers do not say by themselves (kept in the JSON and "
        "printed under the section); repeatable",
    )
    args = parser.parse_args()
    pairs = [t.split("=", 1) for t in args.tree or ["current=operator"]]
    args.trees = {name: str(Path(path).resolve()) for name, path in pairs}
    return args


if __name__ == "__main__":
    arguments = parse()  # first: `--help` or a wrong flag starts no cluster
    with control_plane.running() as cluster:
        asyncio.run(main(arguments, cluster))
