"""Measure the runner: start-to-ready time, its own RSS, and RSS per agent in Shared.

Not a test (pytest does not collect it). Run from the repository root:

    python tests/runner/measure_runner.py [--repeat 5] [--agents 3]

Runners are real processes against the fake API on loopback, as in the tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from runner_harness import Runner, result_of, start_runner

from corral.testing.fake_anthropic import FakeAnthropic


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss(runner: Runner) -> tuple[int, list[int]]:
    """RSS of the runner itself and of each CLI child, in KiB."""
    return rss_kib(runner.proc.pid), [rss_kib(pid) for pid in runner.cli_pids()]


def start_to_ready(fake: FakeAnthropic, base: Path, repeat: int) -> list[float]:
    times = []
    for n in range(repeat):
        started = time.monotonic()
        runner = start_runner({"pattern": "LongRunning"}, base / f"ready{n}", fake.url, wait=False)
        runner.wait_ready()
        times.append(time.monotonic() - started)
        assert runner.terminate() == 0
    return times


def measure_single(fake: FakeAnthropic, base: Path) -> dict[str, Any]:
    runner = start_runner({"pattern": "LongRunning"}, base / "single", fake.url)
    try:
        idle = tree_rss(runner)
        for n in range(3):
            result_of(runner.send(f"message {n}"))
        busy = tree_rss(runner)
    finally:
        runner.terminate()
    return {"idle": idle, "after_3_messages": busy}


def measure_shared(fake: FakeAnthropic, base: Path, agents: int) -> dict[str, Any]:
    spec = {
        "pattern": "Shared",
        "agents": [{"name": f"agent{n}"} for n in range(agents)],
    }
    runner = start_runner(spec, base / "shared", fake.url)
    try:
        idle = tree_rss(runner)
        for n in range(agents):
            result_of(runner.send("hello", agent=f"agent{n}"))
        busy = tree_rss(runner)
    finally:
        runner.terminate()
    return {"idle": idle, "after_1_message_each": busy}


def mib(kib: int | float) -> str:
    return f"{kib / 1024:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--agents", type=int, default=3)
    args = parser.parse_args()
    fake = FakeAnthropic()
    fake.start_in_thread()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ready = start_to_ready(fake, base, args.repeat)
        single = measure_single(fake, base)
        shared = measure_shared(fake, base, args.agents)
    fake.stop_thread()
    print(
        f"start-to-ready (spawn to /readyz 200, {args.repeat} runs): "
        f"median {statistics.median(ready):.2f} s, min {min(ready):.2f} s, "
        f"max {max(ready):.2f} s"
    )
    for label, (runner_kib, clis) in single.items():
        print(f"single agent, {label}: runner {mib(runner_kib)}, CLI {[mib(c) for c in clis]}")
    for label, (runner_kib, clis) in shared.items():
        per_agent = statistics.mean(clis) if clis else 0
        print(
            f"Shared x{args.agents}, {label}: runner {mib(runner_kib)}, "
            f"CLIs {[mib(c) for c in clis]}, mean per agent {mib(per_agent)}"
        )


if __name__ == "__main__":
    main()
