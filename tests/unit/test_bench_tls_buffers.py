"""bench.tls_buffers runs end to end: both variants, each client's connections really open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_measures_both_variants(tmp_path: Path) -> None:
    out = tmp_path / "tls.json"
    command = [sys.executable, "-m", "bench.tls_buffers", "--connections", "8", "--rounds", "1"]
    command += ["--bulk-mib", "4"]
    subprocess.run([*command, "--out", str(out)], cwd=ROOT, check=True, timeout=120)
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["asyncio", "corral"]
    for row in result["rows"]:
        # Eight streams, each with its first chunk read: the client's memory grew.
        assert row["rss_after_kib"] > row["rss_before_kib"]
        assert row["bulk_cpu_ms_per_mib"] > 0  # the 4 MiB response was read whole
    assert set(result["median"]) == {"asyncio", "corral"}
    assert result["connections"] == 8
