"""The chaos tests' load size, store class and figures (the load itself and the check that
nothing was lost are `corral.testing.load`, shared with the real-node suite).

The load: `CORRAL_CHAOS_SESSIONS` AgentSessions (default 200) of mixed patterns on KWOK's
fake nodes, Hybrid "sleepers" among them that a scenario sends to sleep (idleTimeout
shortened to 1s) so that scale-downs happen during the fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.testing.operator import OperatorProcess

STORAGE_CLASS = "corral-chaos-manual"
REPO = Path(__file__).resolve().parents[2]
FIGURES = REPO / "docs" / "benchmarks" / "chaos.json"


def session_count() -> int:
    return int(os.environ.get("CORRAL_CHAOS_SESSIONS", "200"))


# --- figures -------------------------------------------------------------------------------


@dataclass
class OperatorFigures:
    """Counters of one operator process, read before and after a window."""

    operator: OperatorProcess
    log_offset: int = 0
    requests: float = 0.0
    writes: float = 0.0
    errors: float = 0.0

    def _now(self) -> tuple[float, float, float]:
        requests = self.operator.metric("corral_kube_requests_total")
        writes = sum(
            self.operator.metric("corral_kube_requests_total", f'verb="{verb}"')
            for verb in ("POST", "PATCH", "PUT", "DELETE")
        )
        return requests, writes, self.operator.metric("corral_errors_total")

    def start(self) -> OperatorFigures:
        self.requests, self.writes, self.errors = self._now()
        self.log_offset = self.operator.log_path.stat().st_size
        return self

    def since(self) -> dict[str, Any]:
        requests, writes, errors = self._now()
        with self.operator.log_path.open("rb") as log:
            log.seek(self.log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        levels: dict[str, int] = defaultdict(int)
        too_many = 0
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                levels[str(record.get("level"))] += 1
                too_many += "429" in str(record.get("msg", ""))
        return {
            "operator_requests": int(requests - self.requests),
            "operator_writes": int(writes - self.writes),
            "reconcile_errors": int(errors - self.errors),
            "log_warnings": levels.get("warning", 0),
            "log_errors": levels.get("error", 0),
            "log_lines_naming_429": too_many,
        }


def record_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Write this scenario's figures into docs/benchmarks/chaos.json, keeping the others."""
    data: dict[str, Any] = {}
    if FIGURES.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(FIGURES.read_text())
    data.setdefault("scenarios", {})[scenario] = {
        **figures,
        "measured": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "shared with other test runs"
    )
    data["written_by"] = "tests/chaos (pytest tests/chaos)"
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{scenario}: {json.dumps(figures, sort_keys=True)}")
