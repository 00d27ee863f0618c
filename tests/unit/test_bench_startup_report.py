"""The wake report's per-wake marks (bench.startup_report.wake_gates)."""

from __future__ import annotations

from bench.startup_report import WakeGates, wake_gates


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
    # The runner's readiness opened the first; the kubelet's status the second.
    assert [g.opened for g in gates] == [1.25, 1.8]
