"""The README's main command (`corral up`) brings every example session to life."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_corral_up_reconciles_every_example(kubeconfig: Path, crd: None) -> None:
    from corral.testing.operator import free_port

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "up",
            "--kwok",
            "--exit-when-ready",
            f"--port={free_port()}",
            "--timeout=120",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # It says plainly that nothing runs on KWOK nodes, and why it did not use a real node.
    assert "KWOK only" in done.stderr and "--kwok was given" in done.stderr, done.stderr
    row = re.compile(r"^([a-z0-9-]+)=(\w*)/(\S*)$")
    rows = {m[1]: f"{m[2]}/{m[3]}" for m in map(row.match, done.stdout.splitlines()) if m}
    assert set(rows) == {"docs-assistant", "fizzbuzz", "repo-janitor", "review-team"}
    for name, state in rows.items():
        phase, pod = state.split("/", 1)
        if name == "repo-janitor" and phase == "Idle":
            continue  # Hybrid, scaled to zero again (a demo namespace left by an earlier run)
        assert phase in ("Pending", "Running"), name
        assert pod.startswith(name), name
