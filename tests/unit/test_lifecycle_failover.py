"""After a failover or restart, no idle scale-down before a busy runner could have been heard.

Runners report to the leader only (every 30 s while a message runs); a new leader holds no
reports, so a Hybrid session in a long silent tool call looks idle to it until the next
heartbeat arrives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller.lifecycle import HEARTBEAT_GRACE, Activity, Observed, Plan, decide, timestamp
from corral.controller.pods import pod_view
from corral.render import render_pod
from corral.runner.activity import HEARTBEAT_SECONDS

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
REPORTING = OperatorConfig(
    activityUrl="http://corral-operator.corral-system.svc:8081",
    runnerEnv={"ANTHROPIC_API_KEY": "sk-ant-test"},
)


def idle_hybrid() -> tuple[AgentSession, Observed]:
    """A Hybrid session whose runner was last active an hour ago (timeout 1m)."""
    body = {
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": {"pattern": "Hybrid", "idleTimeout": "1m"},
        "status": {"phase": "Running", "lastActivityTime": timestamp(LONG_AGO), "attempts": 1},
    }
    session = AgentSession.model_validate(body)
    pod = render_pod(session, REPORTING, attempt=1)
    pod["metadata"].update(uid="p-1", creationTimestamp=timestamp(LONG_AGO))
    pod["status"] = {
        "phase": "Running",
        "startTime": timestamp(LONG_AGO),
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    observed = Observed(
        session=session,
        pods=[pod_view(pod)],
        has_service=True,
        has_network_policy=True,
        has_pvc=True,
        now=NOW,
    )
    return session, observed


def decide_with(
    leading_since: datetime | None,
    config: OperatorConfig = REPORTING,
    activity: Activity | None = None,
) -> Plan:
    _, observed = idle_hybrid()
    return decide(
        Observed(**{**observed.__dict__, "leading_since": leading_since, "activity": activity}),
        config,
    )


def test_a_new_leader_does_not_scale_down_before_a_heartbeat_could_come() -> None:
    """Fix: a new leader reconciled every session at once with "busy" unknown and scaled a
    Hybrid session down in the middle of a turn."""
    plan = decide_with(leading_since=NOW - timedelta(seconds=10))
    assert plan.delete_pods == []
    assert not plan.scaled_down
    assert plan.status_patch is None or plan.status_patch.get("phase") != "Idle"
    # It looks again when the grace is over.
    assert plan.requeue_after == (HEARTBEAT_GRACE - timedelta(seconds=10)).total_seconds()


def test_after_the_grace_an_idle_session_is_scaled_down() -> None:
    plan = decide_with(leading_since=NOW - HEARTBEAT_GRACE - timedelta(seconds=1))
    assert [d.reason for d in plan.delete_pods] == ["IdleTimeout"]
    assert plan.scaled_down


def test_a_report_heard_since_leading_ends_the_grace() -> None:
    since = NOW - timedelta(seconds=10)
    idle = Activity(last_activity=LONG_AGO, busy=False, pod_name=None, received_at=NOW)
    plan = decide_with(leading_since=since, activity=idle)
    assert plan.scaled_down
    # A report from an earlier term (kept from before a failover) does not count.
    old = Activity(last_activity=LONG_AGO, busy=False, received_at=since - timedelta(seconds=1))
    assert not decide_with(leading_since=since, activity=old).scaled_down


def test_without_activity_reports_no_leader_ever_scales_down() -> None:
    # Nothing to wait for, and nothing to decide on: without an activity URL a Hybrid
    # session is never put to sleep (and says so in its ActivityReports condition).
    config = OperatorConfig(runnerEnv={"ANTHROPIC_API_KEY": "sk-ant-test"})
    assert not decide_with(leading_since=NOW - timedelta(hours=2), config=config).scaled_down


def test_the_grace_is_longer_than_the_runner_heartbeat() -> None:
    assert timedelta(seconds=HEARTBEAT_SECONDS) < HEARTBEAT_GRACE


def test_the_grace_is_the_operators_setting() -> None:
    quick = REPORTING.model_copy(update={"failover_grace_seconds": 5.0})
    assert decide_with(leading_since=NOW - timedelta(seconds=6), config=quick).scaled_down
    assert not decide_with(leading_since=NOW - timedelta(seconds=6)).scaled_down
    assert OperatorConfig().failover_grace_seconds == HEARTBEAT_GRACE.total_seconds()
