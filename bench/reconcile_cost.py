"""The operator's own work per session, counted in CPU instructions, trees side by side.

    python -m bench.reconcile_cost --tree before=/tmp/corral-before/operator --tree after=operator

The end-to-end benchmark (bench.operator_footprint) times a whole operator against a real
API server; on a shared two-core machine its rounds disagree by as much as the steps being
measured. This one runs only the pure part of a reconcile, the part Corral's code decides
(parse a watched session into the models, `decide`), under valgrind's callgrind, which
counts instructions: the same count for the same code and inputs whatever else the machine
is doing.

For each tree, a process with that tree first on `PYTHONPATH` walks a LongRunning session
through what the footprint benchmark's sessions go through (new; pod created; pod Pending
on the watch; pod Running, not ready; pod Ready; then at rest), writing each decided
status back as the reconciler would, `--rounds` times; a second process does the same
set-up with no rounds. The difference, per round and per step, is the instructions one
decision costs (and one parse of the session's watch event). Writes JSON beside the
footprint figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.report import this_command
from bench.run import machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "reconcile-cost.json"
COLLECTED = re.compile(r"Collected : (\d+)")

# Run inside the measured process (`python -c`), with the tree's corral importable.
WALK = r"""
import sys
from datetime import timedelta
sys.path.insert(0, sys.argv[2])
from test_lifecycle import CONFIG, T0, make_pod, make_session, observe
from corral.controller.lifecycle import decide
from corral.controller.store import Store

rounds = int(sys.argv[1])
first = make_session("LongRunning")
body = first.model_dump(by_alias=True, mode="json", exclude_none=True)
# The pods as the watch shows them, step by step (rendered once: the operator renders a pod
# only to create it, and reads the watched ones through pod_view).
STEPS = (
    ([], False),
    ([make_pod(first, phase="Pending", ready=False)], True),
    ([make_pod(first, phase="Pending", ready=False)], True),
    ([make_pod(first, phase="Running", ready=False)], True),
    ([make_pod(first, phase="Running", ready=True)], True),
    ([make_pod(first, phase="Running", ready=True)], True),
)


# The session's watch event at `version` (its spec's generation stays 1).
def event(version, status):
    metadata = {**body["metadata"], "resourceVersion": str(version)}
    return {**body, "metadata": metadata, "status": status}


def walk():
    store = Store()  # a new session: its first event is parsed in full
    version = 1
    status = {}
    session = store.put_session(event(version, status))
    for step, (views, children) in enumerate(STEPS):
        now = T0 + timedelta(seconds=step)
        plan = decide(observe(session, views, now, children=children), CONFIG)
        if plan.status_patch:
            # The reconciler's merge patch, then its watch event.
            status = {k: v for k, v in {**status, **plan.status_patch}.items() if v is not None}
            version += 1
            session = store.put_session(event(version, status))
    return session


for _ in range(rounds):
    last = walk()
"""


def instructions(tree: str, rounds: int) -> int:
    """Instructions of one process that makes `rounds` walks (start-up included)."""
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            WALK,
            str(rounds),
            str(ROOT / "tests" / "unit"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def measure(tree: str, rounds: int, shown: str) -> dict[str, Any]:
    baseline = instructions(tree, 0)
    total = instructions(tree, rounds)
    per_round = (total - baseline) / rounds
    return {
        "tree": shown,
        "rounds": rounds,
        "instructions_setup": baseline,
        "instructions_per_walk": round(per_round),
        # A walk is six decisions and one parse of a watched session.
        "instructions_per_decision": round(per_round / 6),
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of an operator source tree (the folder holding `corral`); repeatable",
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    pairs = [t.split("=", 1) for t in args.tree or ["current=operator"]]
    args.trees = {name: str(Path(path).resolve()) for name, path in pairs}
    args.shown = dict(pairs)  # as given: no machine's paths in the JSON
    return args


def main(args: argparse.Namespace) -> None:
    rows = {name: measure(path, args.rounds, args.shown[name]) for name, path in args.trees.items()}
    for name, row in rows.items():
        print(f"{name}: {row['instructions_per_walk']:,} instructions per walk", flush=True)
    names = list(rows)
    out: dict[str, Any] = {
        "machine": machine(),
        "command": this_command(),
        "trees": rows,
    }
    if len(names) == 2:
        before, after = (rows[n]["instructions_per_walk"] for n in names)
        out["ratio"] = round(after / before, 3)
        print(f"{names[1]} / {names[0]}: {out['ratio']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(parse())
