"""The wake report's per-wake marks (bench.startup_report.wake_gates)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.startup_report import WakeGates, gate_rows, wake_gates


def _wake(start: int, ready: int, published: int | None, first: int) -> dict[str, object]:
    timeline = {
        "runner_process_start": start,
        "runner_ready": ready,
        "container_running": published,
        "first_event": first,
    }
    return {"first_event_s": first / 1000, "timeline_ms": timeline}


def test_wakes_come_fastest_first_with_what_opened_them() -> None:
    late_status = _wake(650, 1300, 1800, 2000)
    early_status = _wake(600, 1250, 850, 1350)
    gates = wake_gates([late_status, early_status, _wake(600, 1200, None, 1500), {}])
    assert gates == [WakeGates(0.6, 1.25, 0.85, 1.35), WakeGates(0.65, 1.3, 1.8, 2.0)]


def _run(path: Path, *first_events: int) -> Path:
    wakes = [_wake(600, 1200, 900, first) for first in first_events]
    case = {"image": "after", "cpu": "1", "boost": "on", "wake": wakes, "create": []}
    path.write_text(json.dumps({"cases": [case]}))
    return path


def test_runs_of_several_node_set_ups_stay_in_groups_labelled_by_what_differs(
    tmp_path: Path,
) -> None:
    plain = _run(tmp_path / "wake-s36-debian-containerd.json", 2000, 1400)
    evented = _run(tmp_path / "wake-s36-built-containerd-evented.json", 5100, 5000)
    rows = gate_rows([plain, evented])
    assert [(label, g.first_event) for label, g in rows] == [
        ("debian-containerd 1 CPU", 1.4),
        ("debian-containerd 1 CPU", 2.0),
        ("built-containerd-evented 1 CPU", 5.0),
        ("built-containerd-evented 1 CPU", 5.1),
    ]
    # One file: its rows are labelled by their CPU alone.
    assert [label for label, _ in gate_rows([plain])] == ["1 CPU", "1 CPU"]


def test_a_run_of_two_runner_images_keeps_each_in_a_group_of_its_own(tmp_path: Path) -> None:
    def case(image: str, *first_events: int) -> dict[str, object]:
        wakes = [_wake(600, 1200, 900, first) for first in first_events]
        return {"image": image, "cpu": "1", "boost": "on", "wake": wakes, "create": []}

    path = tmp_path / "wake-s38.json"
    path.write_text(json.dumps({"cases": [case("before", 2100, 1400), case("after", 1500)]}))
    rows = gate_rows([path])
    assert [(label, g.first_event) for label, g in rows] == [
        ("before 1 CPU", 1.4),
        ("before 1 CPU", 2.1),
        ("after 1 CPU", 1.5),
    ]
