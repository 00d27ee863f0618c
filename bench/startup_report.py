"""The start-up and wake tables of docs/startup-benchmarks.md, from the raw numbers.

    python -m bench.startup_report [--local docs/benchmarks/runner-startup.json]
                                   [--node docs/benchmarks/startup.json ...]

`--local` is what `python -m bench.runner_startup --out ...` writes (a runner process on
this machine under a CPU quota); `--node` what tests/e2e/test_wake_benchmark.py writes (pods
on the real node; several files: one per run). Prints the Markdown; `--plot PATH` also draws
the wake figures, `--steps-plot PATH` each `--node` file's wakes as stacked steps (p50),
one bar per file and CPU limit: runs on different machines side by side, and `--gates-plot
PATH` every wake as a row: the runner's start, the kubelet's status of the pod and the
first event.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s (p90 {pct(values, 0.9):.2f}, n={len(values)})"


def local_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| CPU | runner | start → listening p50 | start → ready p50 "
        "| CPU-s to ready (runner + CLI) | runner's own "
        "| CPU-s to ready + one answer | runner's own | first event after send "
        "| start → first event | load (1 min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(case: dict[str, Any], key: str, unit: str = "") -> str:
        value = case.get(key)  # older files lack the newer figures
        return "-" if value is None else f"{value:.2f}{unit}"

    for case in data["cases"]:
        cpu = "none" if case["cpu"] is None else f"{case['cpu']:g}"
        lines.append(
            f"| {cpu} | {case['tree']} | {cell(case, 'listening_s_p50', ' s')} "
            f"| {case['ready_s_p50']:.2f} s "
            f"| {case['cpu_to_ready_s_p50']:.2f} | {case['runner_cpu_to_ready_s_p50']:.2f} "
            f"| {case['cpu_to_answer_s_p50']:.2f} | {cell(case, 'runner_cpu_to_answer_s_p50')} "
            f"| {case['first_event_s_p50'] * 1000:.0f} ms "
            f"| {cell(case, 'start_to_first_event_s_p50', ' s')} | {cell(case, 'load_1m_p50')} |"
        )
    return lines


def _values(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [float(s[key]) for s in samples if s.get(key) is not None]


def node_cases(paths: list[Path]) -> list[dict[str, Any]]:
    """Cases of several runs, merged by (image, cpu, boost); runs before the start-up boost
    have no `boost` ("-")."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in paths:
        for case in json.loads(path.read_text())["cases"]:
            key = (case["image"], case["cpu"], case.get("boost", "-"))
            empty = {"image": key[0], "cpu": key[1], "boost": key[2], "wake": [], "create": []}
            into = merged.setdefault(key, empty)
            into["wake"] += case["wake"]
            into["create"] += case["create"]
    return list(merged.values())


def _order(case: dict[str, Any]) -> tuple[str, bool, str]:
    return (case["cpu"], case["image"] != "before", case.get("boost", "-"))


def node_table(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| CPU | runner image | start-up boost | wake → first event "
        "| create → first event (LongRunning) "
        "| runner process start → ready | runner ready → pod Ready |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in sorted(cases, key=_order):
        every = case["wake"] + case["create"]
        lines.append(
            f"| {case['cpu']} | {case['image']} | {case.get('boost', '-')} "
            f"| {fmt(_values(case['wake'], 'first_event_s'))} "
            f"| {fmt(_values(case['create'], 'first_event_s'))} "
            f"| {fmt(_values(every, 'process_to_ready_s'))} "
            f"| {fmt(_values(every, 'runner_ready_to_pod_ready_s'))} |"
        )
    return lines


def breakdown_table(cases: list[dict[str, Any]]) -> list[str]:
    """Where a wake's time goes, after the request: means (the API's times have whole
    seconds, so single samples are off by up to a second; means over many are not)."""
    keys = (
        "pod_created_after_s",
        "container_started_after_s",
        "runner_ready_after_s",
        "first_event_s",
    )
    lines = [
        "| CPU | runner image | start-up boost | pod created | container running | runner ready "
        "| first event | n |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in sorted(cases, key=_order):
        samples = [w for w in case["wake"] if all(w.get(k) is not None for k in keys[:2])]
        if not samples:
            continue
        cells = []
        for key in keys:
            values = _values(samples, key)
            cells.append(f"{statistics.mean(values):.2f} s" if values else "-")
        lines.append(
            f"| {case['cpu']} | {case['image']} | {case.get('boost', '-')} | {' | '.join(cells)} "
            f"| {len(samples)} |"
        )
    return lines


TIMELINE_STEPS = (
    ("wake_requested", "gateway asks the wake"),
    ("wake_seen", "wake seen on a watch"),
    ("pod_created", "pod created"),
    ("pod_scheduled", "pod scheduled"),
    ("container_running", "container running (status)"),
    ("runner_process_start", "runner process start"),
    ("runner_started", "runner started"),
    ("runner_ready", "runner ready"),
    ("first_event", "first event"),
    ("cpu_lowered", "CPU limit lowered"),
    ("pod_ready", "pod Ready (status)"),
)


def timeline_table(cases: list[dict[str, Any]]) -> list[str]:
    """A wake step by step, milliseconds after the request: p50 of each step (watch events
    and logs on one clock; see tests/e2e/test_wake_benchmark.py)."""
    with_timeline = [
        c for c in sorted(cases, key=_order) if any("timeline_ms" in w for w in c["wake"])
    ]
    if not with_timeline:
        return []
    header = " | ".join(f"{c['cpu']} boost {c.get('boost', '-')}" for c in with_timeline)
    lines = [f"| step (ms after the request, p50) | {header} |"]
    lines.append("|---|" + "---:|" * len(with_timeline))
    for key, label in TIMELINE_STEPS:
        cells = []
        for case in with_timeline:
            values = [
                float(w["timeline_ms"][key])
                for w in case["wake"]
                if w.get("timeline_ms", {}).get(key) is not None
            ]
            cells.append(f"{statistics.median(values):.0f}" if values else "-")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    counts = " | ".join(str(len(c["wake"])) for c in with_timeline)
    lines.append(f"| n | {counts} |")
    return lines


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, data = [], []
    for case in sorted(cases, key=_order):
        labels.append(f"{case['image']}, boost {case.get('boost', '-')}\n{case['cpu']} CPU")
        data.append(_values(case["wake"], "first_event_s"))
    ax.boxplot(data, tick_labels=labels)
    ax.set_ylabel("wake → first event (s)")
    ax.set_title("Hybrid wake through the gateway, real node")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# A wake's steps, as (label, from, to) marks of its timeline (ms after the request).
WAKE_STEPS = (
    ("Corral: request → pod created", None, "pod_created"),
    ("kubelet: pod created → runner process", "pod_created", "runner_process_start"),
    ("runner start: process → ready", "runner_process_start", "runner_ready"),
    ("first answer: ready → first event", "runner_ready", "first_event"),
)


def wake_steps(wakes: list[dict[str, Any]]) -> list[float]:
    """The p50 of each of WAKE_STEPS over `wakes`, in seconds."""
    medians = []
    for _, start, end in WAKE_STEPS:
        spans = [
            (t[end] - (t[start] if start else 0)) / 1000
            for t in (w.get("timeline_ms", {}) for w in wakes)
            if t.get(end) is not None and (start is None or t.get(start) is not None)
        ]
        medians.append(statistics.median(spans) if spans else 0.0)
    return medians


def plot_steps(paths: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, list[float]]] = []
    for source in paths:
        for case in sorted(node_cases([source]), key=_order):
            label = f"{source.stem}\n{case['cpu']} CPU"
            bars.append((label, wake_steps(case["wake"])))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(bars) + 1.6))
    left = [0.0] * len(bars)
    for index, (name, _, _) in enumerate(WAKE_STEPS):
        widths = [steps[index] for _, steps in bars]
        ax.barh([label for label, _ in bars], widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds after the request (p50 of each step)")
    ax.set_title("Hybrid wake through the gateway, real node: where the time goes")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class WakeGates:
    """One wake's marks, in seconds after the request: the runner's process start and
    readiness, the kubelet's status of the started pod (its IP and phase Running, the
    first moment anything can route to it), and the reply's first event."""

    process_start: float
    runner_ready: float
    status_published: float
    first_event: float


def wake_gates(wakes: list[dict[str, Any]]) -> list[WakeGates]:
    """The wakes with a whole timeline, fastest first."""
    marks = ("runner_process_start", "runner_ready", "container_running", "first_event")
    found = []
    for wake in wakes:
        timeline = wake.get("timeline_ms", {})
        if all(timeline.get(mark) is not None for mark in marks):
            found.append(WakeGates(*(timeline[mark] / 1000 for mark in marks)))
    return sorted(found, key=lambda gates: gates.first_event)


def gate_rows(paths: list[Path]) -> list[tuple[str, WakeGates]]:
    """The wakes of each file as labelled rows, one group per file (runs of different node
    set-ups), fastest first in each; with several files, the words that tell their names
    apart label their rows."""
    names = [source.stem.split("-") for source in paths]
    shared = 0  # one file: all of its name is shared, and its rows say only the CPU
    while all(len(n) > shared and n[shared] == names[0][shared] for n in names):
        shared += 1
    rows: list[tuple[str, WakeGates]] = []
    for source, name in zip(paths, names, strict=True):
        cases = sorted(node_cases([source]), key=_order)
        # A file with two runner images (the bench's before and after): a group for each.
        images = list(dict.fromkeys(case["image"] for case in cases))
        for image in images:
            group = []
            for case in (c for c in cases if c["image"] == image):
                shown = f" {image}" if len(images) > 1 else ""
                label = f"{'-'.join(name[shared:])}{shown} {case['cpu']} CPU".lstrip()
                group += [(label, gates) for gates in wake_gates(case["wake"])]
            rows += sorted(group, key=lambda row: row[1].first_event)
    return rows


def plot_gates(paths: list[Path], path: Path) -> None:
    """Each wake as a row: the runner's start (bar), the kubelet's status of the pod (x)
    and the first event (dot). The dot follows whichever of the bar's end and the x
    comes later."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = gate_rows(paths)
    fig, ax = plt.subplots(figsize=(8, 0.18 * len(rows) + 1.8))
    y = list(range(len(rows)))
    starts = [g.process_start for _, g in rows]
    ax.barh(
        y,
        [g.runner_ready - g.process_start for _, g in rows],
        left=starts,
        height=0.6,
        color="tab:blue",
        alpha=0.5,
        label="runner: process start → ready",
    )
    ax.scatter(
        [g.status_published for _, g in rows],
        y,
        marker="x",
        color="tab:red",
        label="kubelet: the pod's status (its IP) in the API",
    )
    ax.scatter(
        [g.first_event for _, g in rows], y, marker="o", color="black", s=14, label="first event"
    )
    # A wake the kubelet held for many seconds would squeeze every other row: cut the axis
    # at twice the slowest row label's median and write such a wake's time at the edge.
    edge = 2 * max(
        statistics.median(g.first_event for label, g in rows if label == first)
        for first in dict.fromkeys(label for label, _ in rows)
    )
    ax.set_xlim(0, edge)
    for row, (_, gates) in enumerate(rows):
        if gates.first_event > edge:
            ax.text(edge, row, f"{gates.first_event:.1f} s →", ha="right", va="center", fontsize=7)
    ax.set_yticks(y, [label for label, _ in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after the request")
    ax.set_title("Hybrid wakes on the real node, fastest first: what the first event waits for")
    # Below the axis label whatever the rows: an offset in inches, as a fraction of the axes.
    axes_inches = fig.get_figheight() * ax.get_position().height
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / axes_inches), ncol=2, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local", type=Path)
    parser.add_argument("--node", type=Path, action="append", default=[])
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--steps-plot", type=Path)
    parser.add_argument("--gates-plot", type=Path)
    args = parser.parse_args()
    out: list[str] = []
    if args.local:
        out += [*local_table(json.loads(args.local.read_text())), ""]
    if args.node:
        cases = node_cases(args.node)
        out += [*node_table(cases), "", *breakdown_table(cases), "", *timeline_table(cases)]
        if args.plot:
            plot(cases, args.plot)
        if args.steps_plot:
            plot_steps(args.node, args.steps_plot)
        if args.gates_plot:
            plot_gates(args.node, args.gates_plot)
    print("\n".join(out))


if __name__ == "__main__":
    main()
