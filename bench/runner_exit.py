"""How long a runner refuses connections before its process is gone, after SIGTERM.

    python -m bench.runner_exit --runs 6 --cpu 0.25 \\
        --tree new=operator --tree old=/tmp/corral-old/operator --out F

The kubelet probes readiness through a pod's termination; each probe that meets the
runner's closed port before the process has ended is an `Unhealthy` Warning Event. Each
run starts an idle LongRunning runner (the fake model on loopback, in a cgroup v1 CPU quota
as in bench.runner_startup), sends SIGTERM once its agent is ready, and tries to connect to
its port every millisecond until the process has exited: the *refusing* window is from the
first refused connection to the exit. Trees alternate run by run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.runner_startup import ActivitySink, LogWatch, cpu_cgroup, free_port, spawn_runner
from corral.testing.fake_anthropic import FakeAnthropic


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def one_run(
    tree: Path, cpus: float | None, fake: FakeAnthropic, sink: ActivitySink
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, cpu_cgroup(cpus) as group:
        port = free_port()
        proc, _ = spawn_runner(tree, group, fake, sink, Path(tmp), port, {})
        assert proc.stdout is not None
        LogWatch(proc.stdout).wait("agent ready")
        time.sleep(0.5)  # idle, as a runner an idle scale-down stops
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        first_refused: float | None = None
        while proc.poll() is None:
            if first_refused is None and refused(port):
                first_refused = time.monotonic()
            time.sleep(0.001)
        gone = time.monotonic()
    return {
        "sigterm_to_exit_ms": round((gone - sent) * 1000, 1),
        "refusing_before_exit_ms": round((gone - first_refused) * 1000, 1)
        if first_refused
        else 0.0,
        "exit_code": proc.returncode,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--cpu", type=float, action="append", help="CPU quota (default none)")
    parser.add_argument("--tree", action="append", help="LABEL=PATH of an operator/ dir")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent / "operator"
    trees = dict(t.split("=", 1) for t in args.tree or [f"this={here}"])
    fake = FakeAnthropic()
    fake.start_in_thread()
    sink = ActivitySink()
    results: dict[str, Any] = {"runs": args.runs, "machine_cpus": os.cpu_count(), "cases": []}
    for cpu in args.cpu or [None]:
        samples: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
        for n in range(args.runs):
            for label, tree in trees.items():
                run = one_run(Path(tree), cpu, fake, sink)
                samples[label].append(run)
                print(f"cpu={cpu} {label} #{n}: {run}", flush=True)
        for label, runs in samples.items():
            windows = [r["refusing_before_exit_ms"] for r in runs]
            exits = [r["sigterm_to_exit_ms"] for r in runs]
            case = {
                "cpu": cpu,
                "tree": label,
                "refusing_before_exit_ms_p50": round(statistics.median(windows), 1),
                "refusing_before_exit_ms_max": max(windows),
                "sigterm_to_exit_ms_p50": round(statistics.median(exits), 1),
                "samples": runs,
            }
            results["cases"].append(case)
            print(json.dumps({k: v for k, v in case.items() if k != "samples"}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
