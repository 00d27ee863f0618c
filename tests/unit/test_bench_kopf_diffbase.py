"""bench.kopf_diffbase times kopf's diff base on a session body the operator could hold."""

from __future__ import annotations

import kopf
from bench.kopf_diffbase import per_event_us, session_at_rest

from corral.api.v1alpha1 import AgentSession
from corral.controller.handlers import configure


def test_the_body_is_a_valid_session_at_rest() -> None:
    body = session_at_rest()
    session = AgentSession.model_validate(body)
    assert session.status is not None and session.status.pod_name == body["status"]["podName"]
    assert [c.type for c in session.status.conditions] == [
        "Ready",
        "PodScheduled",
        "ActivityReports",
    ]


def test_both_variants_are_timed() -> None:
    corral = kopf.OperatorSettings()
    configure(settings=corral)
    body = kopf.Body(session_at_rest())
    assert per_event_us(kopf.OperatorSettings(), body, 20) > 0
    assert per_event_us(corral, body, 20) >= 0
