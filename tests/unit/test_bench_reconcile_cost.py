"""bench.reconcile_cost's walk runs on this tree (the benchmark itself needs valgrind)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import reconcile_cost

REPO = Path(__file__).resolve().parents[2]


def test_the_walk_runs_and_reaches_a_running_session() -> None:
    probe = reconcile_cost.WALK + "\nprint(last.status.phase)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe, "1", str(REPO / "tests" / "unit")],
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "Running", done.stderr
