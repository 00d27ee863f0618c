"""bench.json_decode's figures from recorded bytes (recording needs the default cluster)."""

from __future__ import annotations

import json

from bench.json_decode import measure


def _event(kind: str, name: str, phase: str = "") -> bytes:
    body = {"kind": kind, "metadata": {"name": name}, "status": {"phase": phase}}
    return json.dumps({"type": "MODIFIED", "object": body}).encode()


def test_figures_are_per_session_and_kopf_lines_are_apart() -> None:
    recorded = {
        "AgentSession": [_event("AgentSession", "s0"), _event("AgentSession", "s1")],
        "Pod": [_event("Pod", f"s{i}-0", phase) for i in (0, 1) for phase in ("", "Running")],
        "Service": [_event("Service", "s0"), _event("Service", "s1")],
        "NetworkPolicy": [_event("NetworkPolicy", "s0"), _event("NetworkPolicy", "s1")],
        "answers": [json.dumps({"kind": "Pod"}).encode()] * 8,  # the objects alone
        "bodies": [json.dumps({"kind": "Pod", "spec": {"n": [1, 2]}}).encode()] * 6,
    }
    figures = measure(recorded, sessions=2, repeats=3)
    assert figures["client_decodes_per_session"] == (4 + 2 + 2 + 8) / 2
    assert figures["pod_events_per_session"] == 2
    assert figures["kopf_session_events_per_session"] == 1
    timings = figures["client_ms_per_session"]
    assert set(timings) == {"json.loads", "client"} and all(t > 0 for t in timings.values())
    assert figures["client_ratio"] == timings["client"] / timings["json.loads"]
    assert figures["bodies_per_session"] == 3
    written = figures["encode_ms_per_session"]
    assert figures["encode_ratio"] == written["client"] / written["json.dumps"]
