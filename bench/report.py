"""Turn benchmark results into docs/benchmarks.md and PNG plots."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
# How bench/run.py is meant to be started (sys.argv[0] is its absolute path).
RUN_SCRIPT = "bench/run.py"
RUN_MODULE = "python -m bench.run"

TARGETS = {
    "throughput": "operator sessions/s >= 0.8 x floor",
    "p99": "p99 create->Pod <= 250 ms in the 1,000 burst",
    "idle": "idle lateness p99 <= 2 s at 5,000",
    "rss": "operator RSS <= 300 MB with 5,000 sessions",
    "writes": "no writes per creation beyond children + one status update",
}


def repo_command(command: str, repo: Path | str = REPO) -> str:
    """`command` as anyone can run it from a clone: paths inside the repository relative to
    it, other absolute paths cut to their last part (the machine's layout is not the point)."""
    root = PurePosixPath(str(repo))
    words = []
    for word in shlex.split(command):
        path = PurePosixPath(word)
        label, equals, value = word.partition("=")
        if path.is_absolute():
            word = _in_repo(path, root)
        elif equals and PurePosixPath(value).is_absolute():
            # `--tree old=/somewhere/operator`: another tree, named by its label;
            # `--out=/somewhere/r.json` as a path word is.
            value_path = PurePosixPath(value)
            shown = _in_repo(value_path, root)
            if not value_path.is_relative_to(root) and not label.startswith("-"):
                shown = f"<{label}>/{shown}"
            word = f"{label}={shown}"
        words.append(word)
    if words and words[0] == RUN_SCRIPT:
        words[0] = RUN_MODULE
    return " ".join(shlex.quote(w) if w != RUN_MODULE else w for w in words)


def this_command() -> str:
    """How this benchmark process was invoked, as `repo_command` gives it (quoted word by
    word: a `--note` may hold an apostrophe)."""
    return repo_command(shlex.join(sys.argv))


def command_line(results: dict[str, Any]) -> str:
    """The report's "Command:" line: the run and its follow-ups, relative to the repository."""
    return f"Command: `{repo_command(results['command'])}`" + "".join(
        f"; follow-up: `{repo_command(c)}`" for c in results.get("follow_ups", [])
    )


def _in_repo(path: PurePosixPath, root: PurePosixPath) -> str:
    """`path` relative to the repository; from another checkout (results measured in a clone
    elsewhere), its longest tail that names a file of this one; else its last part."""
    if path.is_relative_to(root):
        return str(path.relative_to(root))
    parts = path.parts[1:]
    for start in range(len(parts)):
        tail = PurePosixPath(*parts[start:])
        if (Path(str(root)) / tail).exists():
            return str(tail)
    return path.name


def _rate(burst: dict[str, Any]) -> str:
    rate = burst.get("client_rate")
    return f"{rate:.0f}" if rate else "–"


def _bursts_table(bursts: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| sessions | mode | client creates/s | sessions/s | create→Pod p50 | p99 | all Running after | operator ÷ floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    floors = {b["count"]: b for b in bursts if b["mode"] == "floor"}
    for b in bursts:
        ratio = ""
        mode = b["mode"] + (" (paced)" if b.get("paced") else "")
        if b["mode"] == "operator" and b["count"] in floors and not b.get("paced"):
            ratio = f"{b['sessions_per_second'] / floors[b['count']]['sessions_per_second']:.2f}×"
        lines.append(
            f"| {b['count']:,} | {mode} | {_rate(b)} | {b['sessions_per_second']:.1f} | {b['p50_ms']:.0f} ms | "
            f"{b['p99_ms']:.0f} ms | {b['running_seconds']:.1f} s | {ratio} |"
        )
    return lines


def _plot_latency(bursts: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for b in bursts:
        values = sorted(b["latencies_ms"])
        if not values:
            continue
        ys = [i / len(values) for i in range(1, len(values) + 1)]
        ax.plot(values, ys, label=f"{b['mode']} {b['count']:,}")
    ax.set_xscale("log")
    ax.set_xlabel("create request → pod seen (ms, log)")
    ax.set_ylabel("fraction of sessions")
    ax.set_title("Create burst: time until the pod exists")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_hist(values: list[float], xlabel: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(values, bins=60)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sessions")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], docs: Path) -> None:
    plots = docs / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `python -m bench.run` (from `bash hack/setup.sh` then `.venv/bin/python -m bench.run`) "
        "against the local control plane: real etcd, kube-apiserver, controller-manager and scheduler, "
        "with KWOK nodes. Every run writes this file, the plots beside it and "
        "[benchmarks/raw.json](benchmarks/raw.json).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}. "
        "The API server, etcd, scheduler, KWOK, the operator and the benchmark client all share these cores.",
        "",
        command_line(results),
        "",
        "## 1. Create burst",
        "",
        "One client creates the sessions as fast as it can (64 requests in flight). *floor* is the same "
        "client creating each session's Pod, Service and NetworkPolicy directly, with no operator. "
        "Latency is from the create request to the pod appearing on a watch.",
        "",
        *_bursts_table(results["bursts"]),
        "",
        "![create latency](benchmarks/create-latency.png)",
        "",
    ]
    _plot_latency(results["bursts"], plots / "create-latency.png")
    if results.get("api_costs"):
        lines += [
            "## 2. API requests per session",
            "",
            "Hybrid sessions (idle timeout 5 s) created, scaled down when idle, woken and deleted. "
            "*operator* counts the operator's own requests (`corral_kube_requests_total`); "
            "*API server writes* counts every writer (scheduler bindings, KWOK status, "
            "controller-manager endpoint slices and garbage collection, the benchmark client).",
            "",
            "| step | operator requests / session | API server writes / session |",
            "|---|---:|---|",
        ]
        for step, numbers in results["api_costs"].items():
            detail = ", ".join(
                f"{k}: {v}" for k, v in numbers["apiserver_writes_per_session"].items()
            )
            lines.append(f"| {step} | {numbers['operator_requests_per_session']} | {detail} |")
        lines.append("")
    if results.get("activity"):
        a = results["activity"]
        lines += [
            "## Activity reports (runner → operator)",
            "",
            f"{a['sessions']:,} Running sessions, {a['reports']:,} reports posted as fast as one client can "
            "(alternately busy and idle, like the start and end of turns).",
            "",
            "| reports/s handled | operator CPU per report | operator API requests per report |",
            "|---:|---:|---:|",
            f"| {a['reports_per_second']} | {a['operator_cpu_ms_per_report']} ms | {a['operator_requests_per_report']} |",
            "",
        ]
    if results.get("at_rest"):
        lines += ["## 3. Operator at rest", "", "| sessions | RSS | CPU |", "|---:|---:|---:|"]
        for r in results["at_rest"]:
            lines.append(f"| {r['sessions']:,} | {r['rss_mb']} MB | {r['cpu_percent']} % |")
        notes = [f"- {r['sessions']:,}: {r['note']}" for r in results["at_rest"] if r.get("note")]
        if notes:
            lines += ["", *notes]
        lines.append("")
    if results.get("idle"):
        idle = results["idle"]
        _plot_hist(
            idle["lateness_s"],
            "scale-down after deadline (s)",
            "Hybrid idle lateness",
            plots / "idle-lateness.png",
        )
        lines += [
            "## 4. Hybrid idle precision",
            "",
            f"{idle['sessions']:,} Hybrid sessions with idle timeouts spread over a minute; lateness of "
            "each scale-down (pod deletion seen on a watch) after its deadline "
            "(`status.lastActivityTime` + `idleTimeout`).",
            "",
            "| sessions | measured | p50 | p99 | max |",
            "|---:|---:|---:|---:|---:|",
            f"| {idle['sessions']:,} | {idle['measured']:,} | {idle['p50_s']} s | {idle['p99_s']} s | {idle['max_s']} s |",
            "",
            "![idle lateness](benchmarks/idle-lateness.png)",
            "",
        ]
    if results.get("wake"):
        wake = results["wake"]
        lines += [
            "## 5. Wake latency (operator side)",
            "",
            f"Idle sessions annotated `corral.dev/wake` at {wake.get('rate_per_second', 'full speed')} "
            "per second (paced, like users coming back); time from the annotation request to the "
            "new pod seen on a watch.",
            "",
            "| sessions | p50 | p99 |",
            "|---:|---:|---:|",
            f"| {wake['sessions']:,} | {wake['p50_ms']} ms | {wake['p99_ms']} ms |",
            "",
        ]
    lines += _targets(results)
    lines += _cpu_table(results["bursts"])
    footprint = plots / "operator-footprint.json"
    if footprint.exists():  # written by bench.operator_footprint
        from bench.operator_footprint import section

        lines += ["", *section(json.loads(footprint.read_text()))]
    (docs / "benchmarks.md").write_text("\n".join(lines))


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[ok]


def _targets(results: dict[str, Any]) -> list[str]:
    bursts = [b for b in results["bursts"] if not b.get("paced")]
    floors = {b["count"]: b for b in bursts if b["mode"] == "floor"}
    ratios = {
        b["count"]: b["sessions_per_second"] / floors[b["count"]]["sessions_per_second"]
        for b in bursts
        if b["mode"] == "operator" and b["count"] in floors
    }
    burst_1000 = next((b for b in bursts if b["mode"] == "operator" and b["count"] == 1000), None)
    paced = next((b for b in results["bursts"] if b.get("paced")), None)
    rest_5000 = next((r for r in results.get("at_rest", []) if r["sessions"] == 5000), None)
    idle = results.get("idle")
    rows = [
        (
            "throughput ≥ 0.8× floor",
            ", ".join(f"{n:,}: {r:.2f}×" for n, r in sorted(ratios.items())),
            all(r >= 0.8 for r in ratios.values()) if ratios else None,
        ),
        (
            "p99 create→Pod ≤ 250 ms, 1,000 burst",
            (f"{burst_1000['p99_ms']:.0f} ms at full speed" if burst_1000 else "-")
            + (
                f"; {paced['p99_ms']:.0f} ms paced at {paced.get('client_rate', 0):.0f}/s"
                if paced
                else ""
            ),
            burst_1000["p99_ms"] <= 250 if burst_1000 else None,
        ),
        (
            "idle lateness p99 ≤ 2 s at 5,000",
            f"{idle['p99_s']} s ({idle['sessions']:,} sessions)" if idle else "-",
            (idle["p99_s"] <= 2 and idle["sessions"] >= 5000) if idle else None,
        ),
        (
            "operator RSS ≤ 300 MB at 5,000",
            f"{rest_5000['rss_mb']} MB" if rest_5000 else "-",
            rest_5000["rss_mb"] <= 300 if rest_5000 else None,
        ),
        (
            "writes per creation: children + one status",
            "see [measurements/api-requests.md](measurements/api-requests.md) (4 writes: Pod, "
            "Service, NetworkPolicy, one status patch; no Event; on a real node the start-up CPU "
            "boost (the default) adds one `pods/resize` once the pod is ready: 5)",
            True,
        ),
    ]
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {_verdict(ok)} |" for name, value, ok in rows]
    lines += [
        "",
        "At full speed one client creates sessions faster than this 2-core machine can turn them "
        "into pods (API server, etcd, controller-manager, scheduler, KWOK and the operator share "
        "the cores: CPU seconds per component below), so the create→Pod latency of a burst is mostly "
        "time spent queued behind earlier sessions — the floor has no such queue because its client "
        "creates the pods itself. The paced row shows the operator's own reaction time when the "
        "system keeps up.",
        "",
    ]
    return lines


def _cpu_table(bursts: list[dict[str, Any]]) -> list[str]:
    if not bursts or not bursts[0].get("cpu_seconds"):
        return []
    names = list(bursts[0]["cpu_seconds"])
    lines = [
        "### CPU seconds per component during each burst",
        "",
        "| sessions | mode | " + " | ".join(names) + " |",
        "|---:|---|" + "---:|" * len(names),
    ]
    for b in bursts:
        mode = b["mode"] + (" (paced)" if b.get("paced") else "")
        lines.append(
            f"| {b['count']:,} | {mode} | "
            + " | ".join(str(b["cpu_seconds"].get(n, "")) for n in names)
            + " |"
        )
    return [*lines, ""]
