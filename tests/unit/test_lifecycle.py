"""`decide()` of every pattern, transition by transition, without a cluster.

Most tests build one snapshot and read the plan. The multi-step ones drive a tiny
in-memory "cluster" (`World`) that applies plans the way the reconciler does (create,
then the status merge patch, then pod deletions), so flows such as retries or twenty
sleep/wake cycles run end to end in microseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral.api import runtime
from corral.api.units import parse_quantity
from corral.api.v1alpha1 import AgentSession, AgentSessionSpec, AgentStatus, Scheduling
from corral.config import OperatorConfig
from corral.controller.credentials import SecretCheck
from corral.controller.lifecycle import Activity, Observed, Plan, decide, timestamp
from corral.controller.pods import PodView, pod_view
from corral.render import pod_name, pvc_name, render_pod
from corral.render.pod import STARTUP_SECONDS

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UID = "0b7d3c1e-5f7a-4c1e-9a55-2b1f0f6d8e01"
# The operator gives every runner a key (as the test operators do), unless a test says not,
# and runners can report activity (without an activity URL, Hybrid sessions never go idle).
ACTIVITY_URL = "http://corral.corral-system.svc:8081/v1/activity"
# The start-up CPU boost is off here; test_cpu_boost.py turns it on.
CONFIG = OperatorConfig(
    runner_env={runtime.ENV_API_KEY: "sk-ant-test"},
    activity_url=ACTIVITY_URL,
    startup_cpu_limit=None,
)

MINIMAL = {
    "Ephemeral": {"pattern": "Ephemeral", "prompt": "Say hello."},
    "LongRunning": {"pattern": "LongRunning"},
    "Hybrid": {"pattern": "Hybrid", "idleTimeout": "5s"},
    "Shared": {"pattern": "Shared", "agents": [{"name": "author"}, {"name": "reviewer"}]},
}

RESULT = {
    "subtype": "success",
    "text": "done",
    "numTurns": 2,
    "totalCostUsd": 0.01,
    "usage": {"inputTokens": 10, "outputTokens": 5},
    "sessionId": "sdk-123",
}


# --- builders ------------------------------------------------------------------------------


def make_session(
    pattern: str = "LongRunning",
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
    **spec: Any,
) -> AgentSession:
    metadata: dict[str, Any] = {
        "name": "demo",
        "namespace": "team-a",
        "uid": UID,
        "generation": 1,
        "annotations": annotations or {},
    }
    if deleting:
        metadata["deletionTimestamp"] = timestamp(T0)
    body = {"metadata": metadata, "spec": {**MINIMAL[pattern], **spec}, "status": status or {}}
    return AgentSession.model_validate(body)


def make_pod(
    session: AgentSession,
    attempt: int = 1,
    *,
    phase: str = "Running",
    ready: bool | None = None,
    started: datetime = T0,
    deleting: bool = False,
    reason: str | None = None,
    terminated: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None,
    unschedulable: bool = False,
    owner_uid: str | None = None,
    restarts: int = 0,
    last_terminated: dict[str, Any] | None = None,
    ready_at: datetime | None = None,
    config: OperatorConfig = CONFIG,
) -> PodView:
    """A pod as the API server would show it, read through the operator's own `pod_view`."""
    body = render_pod(session, config, attempt)
    body["metadata"]["uid"] = f"pod-uid-{attempt}"
    if owner_uid is not None:
        body["metadata"]["ownerReferences"][0]["uid"] = owner_uid
    if deleting:
        body["metadata"]["deletionTimestamp"] = timestamp(started)
    ready = phase == "Running" if ready is None else ready
    state: dict[str, Any] = {}
    if terminated is not None:
        state["terminated"] = terminated
    elif waiting is not None:
        state["waiting"] = waiting
    elif phase == "Running":
        state["running"] = {"startedAt": timestamp(started)}
    conditions: list[dict[str, Any]] = [{"type": "Ready", "status": "True" if ready else "False"}]
    if ready_at is not None:
        conditions[0]["lastTransitionTime"] = timestamp(ready_at)
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient cpu.",
            }
        )
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": runtime.CONTAINER_NAME,
                "state": state,
                "ready": ready,
                "restartCount": restarts,
                "lastState": {"terminated": last_terminated} if last_terminated else {},
                # As a kubelet of 1.33+ reports it (what makes a pod resizable).
                "resources": {},
            }
        ],
    }
    if not unschedulable:
        status["startTime"] = timestamp(started)
    if reason:
        status["reason"] = reason
        status["message"] = f"pod {reason}"
    body["status"] = status
    return pod_view(body)


def terminated(reason: str = "Completed", code: int = 0, **result: Any) -> dict[str, Any]:
    message = json.dumps({**RESULT, **result}) if result or reason == "Completed" else ""
    return {"exitCode": code, "reason": reason, "message": message}


def observe(
    session: AgentSession,
    pods: list[PodView] | None = None,
    now: datetime = T0,
    activity: Activity | None = None,
    children: bool = True,
    credentials_found: bool | None = None,
    secret_check: SecretCheck | None = None,
    pod_gone: str | None = None,
) -> Observed:
    if credentials_found is not None:
        secret_check = SecretCheck.FOUND if credentials_found else SecretCheck.NOT_FOUND
    return Observed(
        session=session,
        pods=pods or [],
        has_service=children,
        has_network_policy=children,
        has_pvc=children and session.spec.pattern == "Hybrid",
        now=now,
        activity=activity,
        secret_check=secret_check,
        pod_gone=pod_gone,
    )


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch, as the API server applies one to /status."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def with_status(session: AgentSession, plan: Plan) -> AgentSession:
    status = session.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    new = merge(status, plan.status_patch or {})
    return session.model_copy(update={"status": type(session.status).model_validate(new)})


def conditions(session: AgentSession) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in session.status.conditions}


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def created(plan: Plan, kind: str) -> list[dict[str, Any]]:
    return [m for m in plan.create if m["kind"] == kind]


@dataclass
class World:
    """Applies plans like the reconciler: create, then status, then delete pods."""

    session: AgentSession
    pods: dict[str, PodView] = field(default_factory=dict)
    now: datetime = T0
    activity: Activity | None = None
    events: list[str] = field(default_factory=list)
    pods_created: list[str] = field(default_factory=list)
    deleted_session: bool = False
    max_pods_seen: int = 0
    config: OperatorConfig = field(default_factory=lambda: CONFIG)

    def step(self) -> Plan:
        observed = observe(self.session, list(self.pods.values()), self.now, self.activity)
        # decide builds its status from a shallow copy of the session's: it must replace
        # what it changes, never change the session it was given (the store's own).
        as_given = self.session.model_dump()
        plan = decide(observed, self.config)
        if plan.confirm_gone:
            # The reconciler looks the pod up; this world's pods are the cluster's.
            assert plan.confirm_gone not in self.pods
            assert replace(plan, confirm_gone=None).empty, "nothing done before the lookup"
            plan = decide(replace(observed, pod_gone=plan.confirm_gone), self.config)
        assert self.session.model_dump() == as_given, "decide changed the session it was given"
        for manifest in created(plan, "Pod"):
            name = manifest["metadata"]["name"]
            assert name not in self.pods, f"pod {name} created twice"
            attempt = int(manifest["metadata"]["annotations"]["corral.dev/attempt"])
            self.pods[name] = make_pod(
                self.session,
                attempt,
                phase="Pending",
                ready=False,
                started=self.now,
                config=self.config,
            )
            self.pods_created.append(name)
        for name, patch in plan.resize_pods:
            (container,) = patch["spec"]["containers"]
            limit = parse_quantity(container["resources"]["limits"]["cpu"])
            self.pods[name] = replace(self.pods[name], cpu_limit=limit)
        self.session = with_status(self.session, plan)
        for deletion in plan.delete_pods:
            self.pods[deletion.name] = replace(self.pods[deletion.name], deleting=True)
        self.events += reasons(plan)
        self.deleted_session = self.deleted_session or plan.delete_session
        self.max_pods_seen = max(self.max_pods_seen, len(self.pods))
        if plan.only_status:
            # The worker decides again after a status write only when the plan changed
            # children too (Controller.worker): a status-only plan must be a fixed point.
            observed = observe(self.session, list(self.pods.values()), self.now, self.activity)
            again = decide(observed, self.config)
            assert replace(again, requeue_after=None).empty, (plan, again)
        return plan

    def settle(self, steps: int = 5) -> None:
        """Reconcile until the plan is empty (level-based: it must get there)."""
        for _ in range(steps):
            plan = self.step()
            if plan.empty:
                return
        raise AssertionError(f"no fixed point after {steps} steps; last plan: {plan}")

    def kubelet(self, name: str, **changes: Any) -> None:
        """The pod's status changes, as the kubelet would report it."""
        attempt = self.pods[name].attempt
        started = self.pods[name].started_at
        base = {"started": datetime.fromisoformat(started.replace("Z", "+00:00"))}
        self.pods[name] = make_pod(self.session, attempt, **{**base, **changes})

    def run_pod(self, name: str | None = None) -> str:
        name = name or self.live_pod()
        self.kubelet(name, phase="Running", ready=True)
        return name

    def finish_deletions(self) -> None:
        for name in [n for n, p in self.pods.items() if p.deleting]:
            del self.pods[name]

    def live_pod(self) -> str:
        live = [n for n, p in self.pods.items() if not p.deleting]
        assert len(live) == 1, f"expected one live pod, got {live}"
        return live[0]

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- level-based properties ----------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(MINIMAL))
def test_new_session_gets_its_children_and_one_pod(pattern: str) -> None:
    session = make_session(pattern)
    plan = decide(observe(session, children=False), CONFIG)
    kinds = sorted(m["kind"] for m in plan.create)
    expected = ["NetworkPolicy", "Pod", "Service"]
    if pattern == "Hybrid":
        expected.insert(1, "PersistentVolumeClaim")
    assert kinds == expected
    assert plan.delete_pods == []
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Pending"
    assert plan.status_patch["podName"] == pod_name(session, 1)
    assert plan.status_patch["attempts"] == 1
    assert plan.status_patch["observedGeneration"] == 1
    assert not [e for e in plan.events if e.type == "Warning"]


@pytest.mark.parametrize("pattern", list(MINIMAL))
def test_decide_is_deterministic_and_reaches_a_fixed_point(pattern: str) -> None:
    session = make_session(pattern)
    snapshot = observe(session)
    assert decide(snapshot, CONFIG) == decide(snapshot, CONFIG)
    world = World(session)
    world.step()
    world.run_pod()
    world.settle()
    assert world.session.status.phase == "Running"
    # Applied: the same snapshot again asks for nothing.
    plan = world.step()
    assert plan.empty, plan


@pytest.mark.parametrize("pattern", list(MINIMAL))
def test_a_created_pod_not_yet_seen_is_not_created_again(pattern: str) -> None:
    """The status says which pod was created; with the pod in the snapshot nothing repeats."""
    world = World(make_session(pattern))
    world.step()
    second = world.step()
    assert created(second, "Pod") == []
    assert world.pods_created == [pod_name(world.session, 1)]


def test_a_session_being_deleted_gets_an_empty_plan() -> None:
    session = make_session("LongRunning", deleting=True)
    assert decide(observe(session, children=False), CONFIG).empty


def test_pods_of_an_older_session_of_the_same_name_are_ignored() -> None:
    session = make_session("LongRunning", status={"phase": "Running"})
    stranger = make_pod(session, 1, owner_uid="another-uid")
    plan = decide(observe(session, [stranger]), CONFIG)
    assert plan.delete_pods == []
    assert [m["metadata"]["name"] for m in created(plan, "Pod")] == [pod_name(session, 1)]


def test_missing_credentials_secret_keeps_the_session_pending() -> None:
    session = make_session("LongRunning", credentials={"secretName": "anthropic"})
    ask = decide(observe(session), CONFIG)
    assert ask.check_credentials == "anthropic"
    assert ask.create == [] and ask.status_patch is None
    plan = decide(observe(session, credentials_found=False), CONFIG)
    assert created(plan, "Pod") == []
    assert plan.requeue_after is not None
    after = with_status(session, plan)
    assert after.status.phase == "Pending"
    assert conditions(after)["CredentialsReady"] == ("False", "SecretNotFound")
    assert reasons(plan) == ["SecretNotFound"]
    # Found later: the pod is created.
    found = decide(observe(after, credentials_found=True), CONFIG)
    assert len(created(found, "Pod")) == 1
    assert conditions(with_status(after, found))["CredentialsReady"] == ("True", "SecretFound")


def test_duplicate_live_pods_keep_only_the_newest() -> None:
    session = make_session("LongRunning", status={"phase": "Running", "attempts": 2})
    old, new = make_pod(session, 1), make_pod(session, 2)
    plan = decide(observe(session, [new, old]), CONFIG)
    assert [d.name for d in plan.delete_pods] == [old.name]
    assert created(plan, "Pod") == []
    assert "DuplicatePodDeleted" in reasons(plan)


# --- Ephemeral -----------------------------------------------------------------------------


def test_ephemeral_pending_running_succeeded_with_result() -> None:
    world = World(make_session("Ephemeral", ttlSecondsAfterFinished=60, retries=1))
    world.step()
    assert world.session.status.phase == "Pending"
    name = world.live_pod()
    world.step()
    assert world.session.status.phase == "Pending"
    assert conditions(world.session)["PodReady"] == ("False", "PodPending")

    world.run_pod(name)
    world.step()
    assert world.session.status.phase == "Running"
    assert conditions(world.session)["Ready"] == ("True", "Running")

    world.advance(30)
    world.kubelet(name, phase="Succeeded", ready=False, terminated=terminated())
    plan = world.step()
    status = world.session.status
    assert status.phase == "Succeeded"
    assert status.result is not None
    assert status.result.subtype == "success"
    assert status.result.num_turns == 2
    assert status.result.total_cost_usd == 0.01
    assert status.result.session_id == "sdk-123"
    assert status.result.usage.input_tokens == 10
    assert (status.session_id, status.num_turns, status.total_cost_usd) == ("sdk-123", 2, 0.01)
    assert status.completion_time == timestamp(world.now)
    assert status.pod_name is None
    assert status.cost is not None and status.cost.pod_seconds == 30
    assert conditions(world.session)["Complete"] == ("True", "Succeeded")
    assert conditions(world.session)["Ready"] == ("False", "Completed")
    # The pod is removed once the outcome is recorded (status before deletion, same plan).
    assert [d.name for d in plan.delete_pods] == [name]
    assert plan.status_patch is not None
    assert "Succeeded" in reasons(plan)
    assert plan.requeue_after == 60


def test_ephemeral_ttl_deletes_the_session_when_due() -> None:
    world = World(make_session("Ephemeral", ttlSecondsAfterFinished=60))
    world.step()
    name = world.run_pod()
    world.kubelet(name, phase="Succeeded", ready=False, terminated=terminated())
    world.step()
    world.finish_deletions()
    world.advance(20)
    plan = world.step()
    assert not plan.delete_session
    assert plan.requeue_after == pytest.approx(40)
    world.advance(40)
    plan = world.step()
    assert plan.delete_session
    assert created(plan, "Pod") == []


def test_ephemeral_without_ttl_is_kept() -> None:
    world = World(make_session("Ephemeral"))
    world.step()
    name = world.run_pod()
    world.kubelet(name, phase="Succeeded", ready=False, terminated=terminated())
    world.step()
    world.finish_deletions()
    world.advance(10**6)
    plan = world.step()
    assert plan.empty
    assert not world.deleted_session


def test_ephemeral_finished_session_deletes_a_leftover_pod() -> None:
    session = make_session("Ephemeral", status={"phase": "Succeeded", "attempts": 1})
    leftover = make_pod(session, 1)
    plan = decide(observe(session, [leftover]), CONFIG)
    assert [d.name for d in plan.delete_pods] == [leftover.name]
    assert created(plan, "Pod") == []


def test_ephemeral_success_without_a_termination_message_still_succeeds() -> None:
    world = World(make_session("Ephemeral"))
    world.step()
    name = world.run_pod()
    world.kubelet(
        name,
        phase="Succeeded",
        ready=False,
        terminated={"exitCode": 0, "reason": "Completed", "message": ""},
    )
    world.step()
    assert world.session.status.phase == "Succeeded"
    assert world.session.status.result is None


FAILURES = [
    # (pod changes, condition reason)
    (
        {"phase": "Failed", "terminated": {"exitCode": 137, "reason": "OOMKilled", "message": ""}},
        "OOMKilled",
    ),
    ({"phase": "Failed", "reason": "Evicted"}, "Evicted"),
    ({"phase": "Failed", "reason": "DeadlineExceeded"}, "DeadlineExceeded"),
    (
        {"phase": "Failed", "terminated": terminated("Error", 1, subtype="error_max_turns")},
        "MaxTurnsReached",
    ),
    (
        {"phase": "Succeeded", "terminated": terminated("Completed", 0, subtype="error_max_turns")},
        "MaxTurnsReached",
    ),
    (
        {"phase": "Failed", "terminated": terminated("Error", 1, subtype="error_max_budget_usd")},
        "MaxBudgetReached",
    ),
    (
        {"phase": "Failed", "terminated": {"exitCode": 2, "reason": "Error", "message": "boom"}},
        "RunnerFailed",
    ),
    ({"phase": "Pending", "waiting": {"reason": "ImagePullBackOff"}}, "ImagePullFailed"),
    ({"phase": "Pending", "waiting": {"reason": "ErrImagePull"}}, "ImagePullFailed"),
]


@pytest.mark.parametrize(("changes", "reason"), FAILURES, ids=[r for _, r in FAILURES])
def test_ephemeral_failure_reasons(changes: dict[str, Any], reason: str) -> None:
    world = World(make_session("Ephemeral"))
    world.step()
    name = world.run_pod()
    world.step()
    world.kubelet(name, ready=False, **changes)
    plan = world.step()
    status = world.session.status
    assert status.phase == "Failed"
    assert conditions(world.session)["Failed"] == ("True", reason)
    assert conditions(world.session)["Ready"] == ("False", reason)
    assert status.completion_time is not None
    assert [d.name for d in plan.delete_pods] == [name]
    warnings = [e for e in plan.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == [reason]
    assert created(plan, "Pod") == []
    # Nothing more happens to a failed run.
    world.finish_deletions()
    world.settle()
    assert world.pods == {}
    assert world.pods_created == [name]


def test_ephemeral_max_turns_result_is_kept_in_status() -> None:
    world = World(make_session("Ephemeral", maxTurns=3))
    world.step()
    name = world.run_pod()
    world.kubelet(
        name,
        phase="Failed",
        terminated=terminated("Error", 1, subtype="error_max_turns", numTurns=3),
    )
    world.step()
    assert world.session.status.result is not None
    assert world.session.status.result.subtype == "error_max_turns"
    assert world.session.status.num_turns == 3


def test_ephemeral_unschedulable_stays_pending_with_the_reason_once() -> None:
    world = World(make_session("Ephemeral"))
    world.step()
    name = world.live_pod()
    world.kubelet(name, phase="Pending", ready=False, unschedulable=True)
    plan = world.step()
    assert world.session.status.phase == "Pending"
    assert conditions(world.session)["PodReady"] == ("False", "Unschedulable")
    assert conditions(world.session)["Ready"] == ("False", "Unschedulable")
    assert reasons(plan) == ["Unschedulable"]
    assert plan.delete_pods == []
    again = world.step()
    assert again.empty, "the Warning is posted once, not on every reconcile"


# What the scheduler (1.34) says of a pod held by a local volume whose node is gone.
VOLUME_BINDING_REFUSAL = (
    "0/2 nodes are available: 2 node(s) didn't match PersistentVolume's node affinity. no "
    "new claims to deallocate, preemption: 0/2 nodes are available: 2 Preemption is not "
    "helpful for scheduling."
)


@pytest.mark.parametrize(
    ("volume_node", "where"),
    [("corral-node", "node corral-node"), (None, "the node its volume is tied to")],
)
def test_hybrid_waiting_for_its_volumes_node_says_so_and_names_it(
    volume_node: str | None, where: str
) -> None:
    world = World(make_session("Hybrid"))
    world.step()
    name = world.live_pod()
    world.pods[name] = replace(world.pods[name], unschedulable=VOLUME_BINDING_REFUSAL)
    plan = decide(
        replace(observe(world.session, list(world.pods.values())), volume_node=volume_node),
        CONFIG,
    )
    session = with_status(world.session, plan)
    assert session.status.phase == "Pending"
    ready = {c.type: c for c in session.status.conditions or []}["Ready"]
    assert (ready.status, ready.reason) == ("False", "VolumeNodeUnavailable")
    assert where in ready.message and pvc_name(session) in ready.message, ready.message
    assert VOLUME_BINDING_REFUSAL in ready.message  # the scheduler's words kept
    assert reasons(plan) == ["VolumeNodeUnavailable"]
    assert plan.delete_pods == [] and created(plan, "Pod") == []  # it waits, same pod


def test_an_unschedulable_pod_without_a_volume_keeps_the_schedulers_reason() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    name = world.live_pod()
    world.pods[name] = replace(world.pods[name], unschedulable=VOLUME_BINDING_REFUSAL)
    world.step()
    assert conditions(world.session)["Ready"] == ("False", "Unschedulable")


def test_ephemeral_retries_make_a_second_pod_then_fail() -> None:
    world = World(make_session("Ephemeral", retries=1))
    world.step()
    first = world.run_pod()
    oom = {"exitCode": 137, "reason": "OOMKilled", "message": ""}
    world.kubelet(first, phase="Failed", terminated=oom)
    plan = world.step()
    assert world.session.status.phase == "Pending"
    assert [d.name for d in plan.delete_pods] == [first]
    assert "Retrying" in reasons(plan)
    assert "Failed" not in conditions(world.session)
    # The predecessor is still there (terminating): no second pod yet.
    assert created(world.step(), "Pod") == []
    world.finish_deletions()
    world.step()
    second = world.live_pod()
    assert second != first
    assert second == pod_name(world.session, 2)
    assert world.session.status.attempts == 2
    assert world.session.status.pod_name == second

    world.run_pod(second)
    world.kubelet(second, phase="Failed", terminated=oom)
    plan = world.step()
    assert world.session.status.phase == "Failed"
    assert conditions(world.session)["Failed"] == ("True", "OOMKilled")
    world.finish_deletions()
    world.settle()
    assert world.pods_created == [first, second]


def test_ephemeral_retry_then_success() -> None:
    world = World(make_session("Ephemeral", retries=2))
    world.step()
    first = world.run_pod()
    world.kubelet(first, phase="Failed", reason="Evicted")
    world.step()
    world.finish_deletions()
    world.step()
    second = world.run_pod()
    world.kubelet(second, phase="Succeeded", terminated=terminated())
    world.step()
    assert world.session.status.phase == "Succeeded"
    assert world.session.status.attempts == 2
    assert conditions(world.session)["Complete"] == ("True", "Succeeded")


@pytest.mark.parametrize(("retries", "phase"), [(0, "Failed"), (1, "Pending")])
def test_ephemeral_pod_lost_while_running(retries: int, phase: str) -> None:
    world = World(make_session("Ephemeral", retries=retries))
    world.step()
    name = world.run_pod()
    world.step()
    world.pods[name] = replace(world.pods[name], deleting=True)
    assert world.step().empty or world.session.status.phase == "Running"
    world.finish_deletions()
    world.step()
    assert world.session.status.phase == phase
    if retries:
        assert world.live_pod() == pod_name(world.session, 2)
    else:
        assert conditions(world.session)["Failed"] == ("True", "PodLost")
        assert world.pods == {}


# --- LongRunning (and Shared, which lives the same way) ------------------------------------


@pytest.mark.parametrize("pattern", ["LongRunning", "Shared"])
def test_long_running_deleted_pod_is_recreated_and_counted(pattern: str) -> None:
    world = World(make_session(pattern))
    world.step()
    first = world.run_pod()
    world.settle()
    world.pods[first] = replace(world.pods[first], deleting=True)
    plan = world.step()
    assert created(plan, "Pod") == [], "wait for the terminating pod before making a new one"
    assert world.session.status.restarts is None
    world.finish_deletions()
    plan = world.step()
    second = world.live_pod()
    assert second != first
    assert world.session.status.restarts == 1
    assert world.session.status.pod_name == second
    assert "PodLost" in reasons(plan)
    world.run_pod(second)
    world.settle()
    assert world.session.status.restarts == 1
    assert world.session.status.phase == "Running"


@pytest.mark.parametrize(
    "changes",
    [
        {"phase": "Failed", "reason": "Evicted"},
        {"phase": "Failed", "terminated": {"exitCode": 1, "reason": "Error", "message": ""}},
    ],
    ids=["evicted", "failed"],
)
def test_long_running_finished_pod_is_replaced(changes: dict[str, Any]) -> None:
    world = World(make_session("LongRunning"))
    world.step()
    first = world.run_pod()
    world.settle()
    world.kubelet(first, ready=False, **changes)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [first]
    assert len(created(plan, "Pod")) == 1
    assert world.session.status.restarts == 1
    assert "PodLost" in reasons(plan)
    world.finish_deletions()
    world.run_pod()
    world.settle()
    assert world.session.status.restarts == 1
    assert len(world.pods_created) == 2


@pytest.mark.parametrize("pattern", ["LongRunning", "Hybrid"])
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"phase": "Failed", "reason": "Evicted"}, "(Evicted"),
        # An eviction for the pod's own disk limit whose runner exits 0 on SIGTERM: the
        # kubelet leaves the pod Succeeded with no reason (found on the real node).
        ({"phase": "Succeeded"}, "(Succeeded, unasked: the kubelet stopped its runner"),
    ],
    ids=["evicted", "succeeded-without-a-reason"],
)
def test_a_pod_that_ended_by_itself_is_replaced_with_what_it_says(
    pattern: str, changes: dict[str, Any], said: str
) -> None:
    extra = {"idleTimeout": "1h"} if pattern == "Hybrid" else {}
    world = World(make_session(pattern, **extra))
    world.step()
    first = world.run_pod()
    world.settle()
    world.kubelet(first, ready=False, **changes)
    plan = world.step()
    (lost,) = [e for e in plan.events if e.reason == "PodLost"]
    assert lost.message.startswith(f"pod {first} ended {said}"), lost.message
    assert [d.name for d in plan.delete_pods] == [first] and len(created(plan, "Pod")) == 1
    assert world.session.status.restarts == 1


def test_long_running_suspend_and_resume() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    first = world.run_pod()
    world.settle()

    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": True})}
    )
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [first]
    assert world.session.status.phase == "Suspended"
    assert world.session.status.pod_name is None
    assert conditions(world.session)["Ready"] == ("False", "Suspended")
    assert reasons(plan) == ["Suspended"]
    world.finish_deletions()
    world.settle()
    assert world.pods == {}
    assert world.events.count("Suspended") == 1

    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": False})}
    )
    plan = world.step()
    assert reasons(plan) == ["PodResumed"]
    world.run_pod()
    world.settle()
    assert world.session.status.phase == "Running"
    assert world.session.status.restarts is None, "a resume is not a restart"


def test_long_running_resume_waits_for_the_suspended_pod_to_go() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    world.run_pod()
    world.settle()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": True})}
    )
    world.step()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": False})}
    )
    assert created(world.step(), "Pod") == []
    world.finish_deletions()
    assert len(created(world.step(), "Pod")) == 1


def test_long_running_image_pull_failure_is_reported_not_fatal() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    name = world.live_pod()
    world.kubelet(name, phase="Pending", ready=False, waiting={"reason": "ImagePullBackOff"})
    plan = world.step()
    assert world.session.status.phase == "Pending"
    assert conditions(world.session)["PodReady"] == ("False", "ImagePullFailed")
    assert reasons(plan) == ["ImagePullFailed"]
    assert plan.delete_pods == []


def test_long_running_spec_change_needing_a_new_pod_replaces_it() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    first = world.run_pod()
    world.settle()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"image": "other:1"})}
    )
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [first]
    assert len(created(plan, "Pod")) == 1
    assert "SpecChanged" in reasons(plan)


def test_a_scheduling_change_replaces_the_pod() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    first = world.run_pod()
    world.settle()
    gpu = Scheduling(node_selector={"pool": "gpu"})
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"scheduling": gpu})}
    )
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [first]
    (pod,) = created(plan, "Pod")
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert "SpecChanged" in reasons(plan)


def test_a_selector_the_operator_overrides_is_warned_about_once_per_pod() -> None:
    config = OperatorConfig.model_validate(
        {**CONFIG.model_dump(by_alias=True), "nodeSelector": {"pool": "agents"}}
    )
    selector = {"pool": "gpu", "zone": "a"}
    world = World(make_session("LongRunning", scheduling={"nodeSelector": selector}), config=config)
    plan = world.step()
    (pod,) = created(plan, "Pod")
    assert pod["spec"]["nodeSelector"] == {"pool": "agents", "zone": "a"}
    (warning,) = [e for e in plan.events if e.reason == "NodeSelectorOverridden"]
    assert warning.type == "Warning" and "nodeSelector pool:" in warning.message
    world.run_pod()
    world.settle()
    assert world.events.count("NodeSelectorOverridden") == 1
    # Without a conflict: no Warning.
    agreeing = make_session("LongRunning", scheduling={"nodeSelector": {"pool": "agents"}})
    plan = World(agreeing, config=config).step()
    assert "NodeSelectorOverridden" not in reasons(plan)


def test_live_spec_change_patches_the_pod_annotation() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    name = world.run_pod()
    world.settle()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"max_turns": 7})}
    )
    plan = world.step()
    assert plan.delete_pods == [] and created(plan, "Pod") == []
    assert [p[0] for p in plan.patch_pods] == [name]


def test_shared_agents_come_from_the_runner_report() -> None:
    world = World(make_session("Shared"))
    world.step()
    world.run_pod()
    world.activity = Activity(
        last_activity=T0,
        busy=False,
        num_turns=4,
        agents=(AgentStatus(name="author", state="idle", num_turns=4),),
    )
    world.step()
    assert world.session.status.num_turns == 4
    assert world.session.status.agents is not None
    assert [a.name for a in world.session.status.agents] == ["author"]


# --- Hybrid --------------------------------------------------------------------------------


def hybrid_world(config: OperatorConfig = CONFIG, **spec: Any) -> World:
    world = World(make_session("Hybrid", **spec), config=config)
    world.step()
    world.run_pod()
    world.settle()
    return world


def test_hybrid_new_session_gets_a_pvc_and_starts_its_idle_clock() -> None:
    session = make_session("Hybrid")
    plan = decide(observe(session, children=False), CONFIG)
    (claim,) = created(plan, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == pvc_name(session)
    assert plan.status_patch is not None
    assert plan.status_patch["pvcName"] == pvc_name(session)
    assert plan.status_patch["lastActivityTime"] == timestamp(T0)


def test_hybrid_stays_awake_before_the_timeout_and_looks_again_at_the_deadline() -> None:
    world = hybrid_world()
    world.advance(3)
    plan = world.step()
    assert plan.delete_pods == []
    assert world.session.status.phase == "Running"
    assert plan.requeue_after == pytest.approx(2)


def test_hybrid_idle_timeout_scales_to_zero_and_keeps_the_volume() -> None:
    world = hybrid_world()
    name = world.live_pod()
    world.advance(6)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    assert plan.scaled_down
    assert created(plan, "PersistentVolumeClaim") == []
    status = world.session.status
    assert status.phase == "Idle"
    assert status.idle_since == timestamp(world.now)
    assert status.last_activity_time == timestamp(T0)
    assert status.pod_name is None
    assert status.pvc_name == pvc_name(world.session)
    assert conditions(world.session)["Idle"] == ("True", "IdleTimeout")
    assert conditions(world.session)["Ready"] == ("False", "Idle")
    assert reasons(plan) == ["ScaledDown"]
    # Asleep: nothing more, even much later, and exactly one scale-down.
    world.finish_deletions()
    world.advance(3600)
    world.settle()
    assert world.pods == {}
    assert world.events.count("ScaledDown") == 1


def starting_hybrid_world() -> World:
    """A Hybrid session (idleTimeout 5s) whose pod runs but whose runner is not ready."""
    world = World(make_session("Hybrid"))
    world.step()
    world.kubelet(world.live_pod(), phase="Running", ready=False)
    world.settle()
    return world


def test_hybrid_pod_still_starting_is_not_counted_idle() -> None:
    """A woken pod that needs longer than idleTimeout to start is not scaled down before
    anyone could talk to it (issue 19)."""
    world = starting_hybrid_world()
    world.advance(60)
    plan = world.step()
    assert plan.delete_pods == []
    assert world.session.status.phase != "Idle"
    # Looked at again when the startup window ends (a Ready change reconciles sooner).
    assert plan.requeue_after == pytest.approx(STARTUP_SECONDS - 60)


def test_hybrid_idle_countdown_starts_when_the_pod_is_ready() -> None:
    world = starting_hybrid_world()
    name = world.live_pod()
    world.advance(30)
    world.kubelet(name, phase="Running", ready=True, ready_at=world.now)
    world.advance(3)
    plan = world.step()
    assert plan.delete_pods == []
    assert plan.requeue_after == pytest.approx(2)
    world.advance(3)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    assert world.session.status.last_activity_time == timestamp(world.now - timedelta(seconds=6))


def test_hybrid_pod_never_ready_counts_idle_after_the_startup_window() -> None:
    world = starting_hybrid_world()
    name = world.live_pod()
    world.advance(STARTUP_SECONDS + 1)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]


def test_hybrid_idle_session_deletes_a_leftover_pod_without_waking() -> None:
    """Crash between the Idle status write and the pod deletion: the pod is still there."""
    world = hybrid_world()
    name = world.live_pod()
    world.advance(6)
    world.step()
    world.pods[name] = replace(world.pods[name], deleting=False)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    assert created(plan, "Pod") == []
    assert world.session.status.wake_count is None
    assert "ScaledDown" not in reasons(plan)


def test_hybrid_busy_runner_stays_awake_past_the_timeout() -> None:
    world = hybrid_world()
    name = world.live_pod()
    world.activity = Activity(last_activity=T0 + timedelta(seconds=1), busy=True)
    world.advance(60)
    plan = world.step()
    assert plan.delete_pods == []
    assert world.session.status.phase == "Running"
    assert plan.requeue_after is not None
    # No longer busy: the clock runs from the last activity.
    world.activity = Activity(last_activity=world.now, busy=False)
    world.advance(4)
    assert world.step().delete_pods == []
    world.advance(2)
    assert [d.name for d in world.step().delete_pods] == [name]


def test_hybrid_recent_activity_moves_the_deadline() -> None:
    world = hybrid_world()
    world.advance(4)
    world.activity = Activity(last_activity=world.now, busy=False, num_turns=1)
    plan = world.step()
    assert world.session.status.last_activity_time == timestamp(world.now)
    assert world.session.status.num_turns == 1
    assert plan.requeue_after == pytest.approx(5)
    world.advance(4)
    assert world.step().delete_pods == []


def test_hybrid_busy_report_from_a_replaced_pod_does_not_keep_the_new_one_awake() -> None:
    """A busy report belongs to the runner that sent it: once that pod is gone, its
    successor idles out on its own clock."""
    world = hybrid_world()
    first = world.live_pod()
    world.activity = Activity(last_activity=T0, busy=True, pod_name=first)
    world.pods[first] = replace(world.pods[first], deleting=True)
    world.step()
    world.finish_deletions()
    world.step()
    second = world.run_pod()
    assert second != first
    world.settle()
    world.advance(6)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [second]
    assert world.session.status.phase == "Idle"


def scaled_down_message(plan: Plan) -> str:
    (event,) = [e for e in plan.events if e.reason == "ScaledDown"]
    return event.message


def report_background_tasks(world: World, count: int, pod: str) -> None:
    """The runner of `pod` reports itself idle with `count` background tasks running."""
    world.activity = Activity(
        last_activity=world.now, busy=False, background_tasks=count, pod_name=pod
    )


def test_hybrid_with_background_tasks_waits_for_the_background_task_timeout() -> None:
    """A build the agent left running keeps the session awake for backgroundTaskTimeout
    (not idleTimeout, 5 s), then the pod goes, and the Event says what ended with it."""
    world = hybrid_world(backgroundTaskTimeout="30s")
    name = world.live_pod()
    report_background_tasks(world, 2, name)
    world.advance(6)
    plan = world.step()
    assert plan.delete_pods == []
    assert world.session.status.background_tasks == 2
    assert plan.requeue_after == pytest.approx(24)
    world.advance(25)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    message = scaled_down_message(plan)
    assert "backgroundTaskTimeout 30s: background tasks running: 2" in message
    assert "ended its background tasks" in message
    assert world.session.status.background_tasks is None  # they ended with the pod


def test_hybrid_with_scheduled_wakeups_waits_as_for_background_tasks() -> None:
    """A wakeup the agent scheduled lives in its CLI: the session stays awake for
    backgroundTaskTimeout (not idleTimeout, 5 s), and the Event says the wakeups are gone;
    with background tasks running too, both are named."""
    world = hybrid_world(backgroundTaskTimeout="30s")
    name = world.live_pod()
    world.activity = Activity(
        last_activity=world.now,
        busy=False,
        background_tasks=1,
        scheduled_wakeups=2,
        pod_name=name,
    )
    world.advance(6)
    plan = world.step()
    assert plan.delete_pods == []
    assert world.session.status.scheduled_wakeups == 2
    world.advance(25)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    message = scaled_down_message(plan)
    assert "backgroundTaskTimeout 30s: background tasks running: 1, wakeups scheduled: 2" in message
    assert "the wakeups its agent scheduled are dropped" in message
    assert world.session.status.scheduled_wakeups is None


def test_hybrid_scheduled_wakeups_alone_say_only_them() -> None:
    world = hybrid_world(backgroundTaskTimeout="10s")
    name = world.live_pod()
    world.activity = Activity(
        last_activity=world.now, busy=False, scheduled_wakeups=1, pod_name=name
    )
    world.advance(11)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    message = scaled_down_message(plan)
    assert "(backgroundTaskTimeout 10s: wakeups scheduled: 1)" in message
    assert "background tasks running" not in message and "ended its background" not in message


def test_hybrid_background_tasks_wait_the_operators_default_when_the_spec_sets_none() -> None:
    world = hybrid_world(
        config=CONFIG.model_copy(update={"default_background_task_timeout": "20s"})
    )
    name = world.live_pod()
    report_background_tasks(world, 1, name)
    world.advance(19)
    assert world.step().delete_pods == []
    world.advance(2)
    assert [d.name for d in world.step().delete_pods] == [name]


def test_hybrid_background_task_timeout_shorter_than_idle_timeout_changes_nothing() -> None:
    world = hybrid_world(backgroundTaskTimeout="0s")
    name = world.live_pod()
    report_background_tasks(world, 1, name)
    world.advance(6)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    assert "(idleTimeout 5s)" in scaled_down_message(plan)


def test_hybrid_background_tasks_of_a_replaced_pod_do_not_keep_the_new_one_awake() -> None:
    world = hybrid_world(backgroundTaskTimeout="1h")
    name = world.live_pod()
    report_background_tasks(world, 3, "a-pod-gone-before")
    world.advance(6)
    plan = world.step()
    assert [d.name for d in plan.delete_pods] == [name]
    assert "background tasks" not in scaled_down_message(plan)


def wake(world: World, value: str) -> None:
    annotations = {**world.session.metadata.annotations, runtime.WAKE_ANNOTATION: value}
    metadata = world.session.metadata.model_copy(update={"annotations": annotations})
    world.session = world.session.model_copy(update={"metadata": metadata})


def report_durable_wakeup(world: World, due: datetime | None) -> None:
    """The live pod's runner reports itself idle, its agent's durable task due at `due`."""
    world.activity = Activity(
        last_activity=world.now,
        busy=False,
        next_durable_wakeup=due,
        pod_name=world.live_pod(),
    )


def test_hybrid_sleeps_and_is_woken_a_minute_before_its_agents_durable_task() -> None:
    """A durable task (CronCreate, durable) is on the volume but only a running CLI runs it:
    the session sleeps as usual, is woken DURABLE_WAKE_LEAD before it, and says why."""
    world = hybrid_world()
    due = world.now + timedelta(minutes=30)
    report_durable_wakeup(world, due)
    world.advance(6)
    plan = world.step()
    assert plan.scaled_down
    assert world.session.status.next_durable_wakeup_time == timestamp(due)
    message = scaled_down_message(plan)
    wake_at = due - timedelta(seconds=120)
    assert f"it wakes at {timestamp(wake_at)} for its agent's durable task" in message
    # Looked at again when it is time (a status-only write reconciles nothing by itself).
    assert plan.requeue_after == pytest.approx((wake_at - world.now).total_seconds())
    world.finish_deletions()
    world.activity = None
    world.settle()
    world.advance((wake_at - world.now).total_seconds() - 1)
    plan = world.step()
    assert created(plan, "Pod") == [] and plan.requeue_after == pytest.approx(1)
    world.advance(1)
    plan = world.step()
    assert len(created(plan, "Pod")) == 1
    assert plan.woke and reasons(plan) == ["WokenForSchedule"]
    assert world.session.status.wake_count == 1
    idle = next(c for c in world.session.status.conditions if c.type == "Idle")
    assert idle.reason == "Woken"
    assert idle.message == f"woken by its agent's durable task due {timestamp(due)}"


def test_hybrid_woken_for_a_durable_task_stays_up_until_it_has_fired() -> None:
    """idleTimeout (5 s) would end the pod before the task's minute: it stays up until
    DURABLE_WAKE_GRACE after it, then sleeps if the task's turn did not come."""
    world = hybrid_world()
    due = world.now + timedelta(seconds=50)
    report_durable_wakeup(world, due)
    world.advance(6)
    plan = world.step()
    assert plan.delete_pods == []
    assert plan.requeue_after == pytest.approx(50 - 6 + 30)
    world.advance(50 - 6 + 30)
    plan = world.step()
    assert plan.scaled_down
    # Past: no wake for it (a CLI started now would not run it), and none later.
    world.finish_deletions()
    world.activity = None
    world.advance(3600)
    world.settle()
    assert world.pods == {} and world.events.count("WokenForSchedule") == 0


def test_hybrid_far_durable_task_does_not_hold_the_pod_and_a_new_report_moves_it() -> None:
    world = hybrid_world()
    report_durable_wakeup(world, world.now + timedelta(minutes=10))
    world.advance(1)
    world.step()
    # The task fired or was deleted: the runner reports none, so nothing is planned.
    report_durable_wakeup(world, None)
    world.advance(6)
    plan = world.step()
    assert plan.scaled_down
    assert world.session.status.next_durable_wakeup_time is None
    assert "durable" not in scaled_down_message(plan)


def test_hybrid_durable_wakeup_times_out_of_bounds_are_not_kept() -> None:
    """The runner's word, from inside the session: a time long past, or years ahead (which
    would hold a wake for ever), is dropped."""
    for due in (T0 - timedelta(hours=1), T0 + timedelta(days=400)):
        world = hybrid_world()
        report_durable_wakeup(world, due)
        world.advance(1)
        world.step()
        assert world.session.status.next_durable_wakeup_time is None


def test_hybrid_suspended_session_is_not_woken_for_a_durable_task() -> None:
    world = hybrid_world()
    due = world.now + timedelta(minutes=5)
    report_durable_wakeup(world, due)
    world.step()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": True})}
    )
    world.settle()
    world.finish_deletions()
    world.activity = None
    world.advance(290)
    world.settle()
    assert world.pods == {} and world.session.status.phase == "Suspended"


def test_hybrid_wake_annotation_brings_a_new_pod_on_the_same_volume() -> None:
    world = hybrid_world()
    first = world.live_pod()
    world.advance(6)
    world.step()
    world.finish_deletions()
    world.advance(100)
    wake(world, "1")
    plan = world.step()
    (pod,) = created(plan, "Pod")
    assert pod["metadata"]["name"] != first
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [pvc_name(world.session)]
    assert created(plan, "PersistentVolumeClaim") == []
    assert plan.woke
    status = world.session.status
    assert status.wake_count == 1
    assert status.observed_wake == "1"
    assert status.idle_since is None
    assert status.last_activity_time == timestamp(world.now)
    assert status.phase == "Pending"
    assert conditions(world.session)["Idle"] == ("False", "Woken")
    assert "Woken" in reasons(plan)
    world.run_pod()
    world.settle()
    assert world.session.status.phase == "Running"
    assert world.session.status.wake_count == 1
    # The same annotation value does not wake again after the next scale-down.
    world.advance(6)
    world.step()
    world.finish_deletions()
    world.settle()
    assert world.session.status.phase == "Idle"
    assert world.session.status.wake_count == 1


def test_hybrid_wake_waits_for_the_scaled_down_pod_to_be_gone() -> None:
    world = hybrid_world()
    world.advance(6)
    world.step()
    wake(world, "now")
    plan = world.step()
    assert created(plan, "Pod") == []
    assert world.session.status.phase == "Idle"
    assert world.session.status.wake_count is None
    assert plan.requeue_after is not None
    world.finish_deletions()
    plan = world.step()
    assert len(created(plan, "Pod")) == 1
    assert world.session.status.wake_count == 1


def test_hybrid_wake_adopts_a_pod_whose_status_write_was_lost() -> None:
    world = hybrid_world()
    world.advance(6)
    world.step()
    world.finish_deletions()
    wake(world, "1")
    asleep = world.session
    plan = world.step()
    (pod,) = created(plan, "Pod")
    world.session = asleep  # the operator died before writing status
    plan = world.step()
    assert created(plan, "Pod") == []
    assert plan.delete_pods == []
    assert world.session.status.wake_count == 1
    assert world.session.status.pod_name == pod["metadata"]["name"]


def test_hybrid_wake_annotation_while_awake_is_only_recorded() -> None:
    world = hybrid_world()
    wake(world, "early")
    plan = world.step()
    assert created(plan, "Pod") == []
    assert world.session.status.observed_wake == "early"
    assert world.session.status.wake_count is None
    world.advance(6)
    world.step()
    world.finish_deletions()
    world.settle()
    assert world.session.status.phase == "Idle"


def test_hybrid_twenty_sleep_wake_cycles() -> None:
    world = hybrid_world()
    for cycle in range(1, 21):
        world.advance(6)
        world.step()
        assert world.session.status.phase == "Idle", cycle
        world.finish_deletions()
        world.settle()
        assert world.pods == {}
        wake(world, f"cycle-{cycle}")
        world.step()
        world.run_pod()
        world.settle()
        assert world.session.status.phase == "Running"
        assert world.session.status.wake_count == cycle
    assert len(world.pods_created) == 21
    assert len(set(world.pods_created)) == 21
    assert world.max_pods_seen == 1
    assert world.events.count("ScaledDown") == 20


def test_hybrid_lost_pod_is_recreated() -> None:
    world = hybrid_world()
    first = world.live_pod()
    world.pods[first] = replace(world.pods[first], deleting=True)
    world.step()
    world.finish_deletions()
    plan = world.step()
    assert len(created(plan, "Pod")) == 1
    assert world.session.status.restarts == 1
    assert world.session.status.phase == "Pending"


def test_hybrid_suspend_keeps_the_volume_and_resume_wakes() -> None:
    world = hybrid_world()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": True})}
    )
    plan = world.step()
    assert len(plan.delete_pods) == 1
    assert world.session.status.phase == "Suspended"
    assert world.session.status.pvc_name == pvc_name(world.session)
    world.finish_deletions()
    world.settle()
    world.session = world.session.model_copy(
        update={"spec": world.session.spec.model_copy(update={"suspend": False})}
    )
    plan = world.step()
    assert len(created(plan, "Pod")) == 1


# --- crash loops -------------------------------------------------------------------------


def crash_looping_pod(world: World, restarts: int, last: dict[str, Any]) -> None:
    """The kubelet's view of a runner that keeps exiting: waiting in back-off, not ready."""
    name = world.live_pod()
    world.kubelet(
        name,
        phase="Running",
        ready=False,
        waiting={"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"},
        restarts=restarts,
        last_terminated=last,
    )


@pytest.mark.parametrize("pattern", ["LongRunning", "Hybrid", "Shared"])
def test_crash_looping_runner_is_reported_with_the_oom_kill_and_its_limit(pattern: str) -> None:
    world = World(make_session(pattern, resources={"memory": "512Mi"}))
    world.step()
    world.run_pod()
    world.settle()
    crash_looping_pod(world, 3, {"exitCode": 137, "reason": "OOMKilled", "message": ""})
    plan = world.step()
    status = world.session.status
    assert status.phase == "CrashLooping"
    assert conditions(world.session)["Ready"] == ("False", "CrashLooping")
    assert conditions(world.session)["PodReady"] == ("False", "CrashLooping")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert "restarted 3 times" in ready.message
    assert "OOMKilled" in ready.message and "512Mi" in ready.message
    assert reasons(plan) == ["CrashLooping"]
    assert plan.events[0].type == "Warning"
    assert plan.delete_pods == []  # restarting in place keeps the workspace
    # The next restart updates the message, without a second Event.
    crash_looping_pod(world, 4, {"exitCode": 137, "reason": "OOMKilled", "message": ""})
    again = world.step()
    assert "restarted 4 times" in next(
        c.message for c in world.session.status.conditions if c.type == "Ready"
    )
    assert reasons(again) == []
    # Back up and ready: Running again.
    world.kubelet(world.live_pod(), phase="Running", ready=True, restarts=4)
    world.step()
    assert world.session.status.phase == "Running"
    assert conditions(world.session)["Ready"] == ("True", "Running")


def test_crash_looping_runner_shows_the_last_log_line_scrubbed_and_bounded() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    world.run_pod()
    world.settle()
    tail = (
        "starting runner\n"
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3\n'
        "RuntimeError: auth failed for sk-ant-api03-AbCdEf0123456789 \x1b[31m" + "x" * 2000 + "\n\n"
    )
    crash_looping_pod(world, 5, {"exitCode": 1, "reason": "Error", "message": tail})
    plan = world.step()
    ready = next(c for c in world.session.status.conditions if c.type == "Ready")
    assert ready.reason == "CrashLooping"
    assert "Error (exit code 1): RuntimeError: auth failed for" in ready.message
    assert "sk-ant-api03" not in ready.message and "AbCdEf0123456789" not in ready.message
    assert "\x1b" not in ready.message and "Traceback" not in ready.message
    assert len(ready.message) < 400
    assert "sk-ant" not in plan.events[0].message


def test_a_runner_restarted_fewer_times_is_still_starting() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    world.run_pod()
    world.settle()
    last = {"exitCode": 1, "reason": "Error", "message": "boom"}
    world.kubelet(world.live_pod(), phase="Running", ready=False, restarts=2, last_terminated=last)
    world.step()
    assert world.session.status.phase == "Pending"
    assert conditions(world.session)["Ready"] == ("False", "RunnerStarting")


# --- a spec too large for a pod ------------------------------------------------------------


def huge_shared_spec(prompt_chars: int = 8192) -> dict[str, Any]:
    """Sixteen agents with long prompts: more JSON than a pod annotation may carry."""
    agents = [
        {"name": f"agent-{i}", "prompt": "p" * prompt_chars, "systemPrompt": "s" * prompt_chars}
        for i in range(16)
    ]
    return {"agents": agents}


def test_spec_too_large_is_reported_once_and_not_retried() -> None:
    session = make_session("Shared", **huge_shared_spec())
    plan = decide(observe(session), CONFIG)  # before the fix: RenderError, retried for ever
    assert created(plan, "Pod") == []
    assert plan.requeue_after is None
    after = with_status(session, plan)
    assert after.status.phase == "Pending"
    assert conditions(after)["SpecAccepted"] == ("False", "SpecTooLarge")
    assert conditions(after)["Ready"] == ("False", "SpecTooLarge")
    accepted = next(c for c in after.status.conditions if c.type == "SpecAccepted")
    assert "bytes as JSON" in accepted.message and "shorten" in accepted.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SpecTooLarge")]
    # Level-based: the same spec again changes nothing and posts nothing.
    assert decide(observe(after), CONFIG).empty
    # A new generation that is still too large is reported again.
    edited = after.model_copy(
        update={"metadata": after.metadata.model_copy(update={"generation": 2})}
    )
    assert reasons(decide(observe(edited), CONFIG)) == ["SpecTooLarge"]


def test_a_spec_shortened_again_gets_its_pod() -> None:
    session = make_session("Shared", **huge_shared_spec())
    too_large = with_status(session, decide(observe(session), CONFIG))
    fixed = too_large.model_copy(
        update={
            "spec": too_large.spec.model_copy(
                update={
                    "agents": [
                        a.model_copy(update={"prompt": "hi", "system_prompt": None})
                        for a in too_large.spec.agents or []
                    ]
                }
            ),
            "metadata": too_large.metadata.model_copy(update={"generation": 2}),
        }
    )
    plan = decide(observe(fixed), CONFIG)
    assert len(created(plan, "Pod")) == 1
    assert "SpecAccepted" not in conditions(with_status(fixed, plan))


def test_a_running_pod_keeps_its_spec_when_the_new_one_is_too_large() -> None:
    world = World(make_session("Shared"))
    world.step()
    name = world.run_pod()
    world.settle()
    body = world.session.spec.model_dump(by_alias=True, exclude_none=True)
    grown = AgentSessionSpec.model_validate({**body, **huge_shared_spec()})
    world.session = world.session.model_copy(update={"spec": grown})
    plan = world.step()
    assert plan.delete_pods == [] and plan.patch_pods == [] and created(plan, "Pod") == []
    assert world.live_pod() == name
    assert conditions(world.session)["SpecAccepted"] == ("False", "SpecTooLarge")
    assert world.session.status.phase == "Running"


# --- TTL: delete the session, or only its children (GitOps) ------------------------------


def finished(ttl: int, cleanup: str | None) -> AgentSession:
    spec: dict[str, Any] = {"ttlSecondsAfterFinished": ttl}
    if cleanup:
        spec["cleanupAfterFinished"] = cleanup
    status = {
        "phase": "Succeeded",
        "attempts": 1,
        "completionTime": timestamp(T0),
        "serviceName": "demo",
        "endpoint": "http://demo.team-a.svc:8080",
    }
    return make_session("Ephemeral", status=status, **spec)


def test_ttl_with_cleanup_children_keeps_the_session_and_deletes_its_service_and_policy() -> None:
    session = finished(60, "Children")
    early = decide(observe(session, now=T0 + timedelta(seconds=20)), CONFIG)
    assert early.delete_children == [] and not early.delete_session
    assert early.requeue_after == pytest.approx(40)

    plan = decide(observe(session, now=T0 + timedelta(seconds=61)), CONFIG)
    assert not plan.delete_session
    assert sorted(plan.delete_children) == [("NetworkPolicy", "demo"), ("Service", "demo")]
    assert plan.create == []
    assert reasons(plan) == ["ChildrenDeleted"]
    after = with_status(session, plan)
    assert after.status.phase == "Succeeded"
    assert after.status.service_name is None and after.status.endpoint is None
    # Once they are gone: nothing is re-created, nothing more happens.
    gone = decide(observe(after, now=T0 + timedelta(seconds=3600), children=False), CONFIG)
    assert gone.empty


@pytest.mark.parametrize("cleanup", [None, "Session"])
def test_ttl_by_default_deletes_the_session(cleanup: str | None) -> None:
    plan = decide(observe(finished(60, cleanup), now=T0 + timedelta(seconds=61)), CONFIG)
    assert plan.delete_session
    assert plan.delete_children == []


# --- no activity URL -----------------------------------------------------------------------


def test_hybrid_without_an_activity_url_is_never_put_to_sleep_and_says_why() -> None:
    """Before the fix it slept 'idle' mid-conversation: nothing could report activity."""
    world = hybrid_world(config=OperatorConfig(runner_env={runtime.ENV_API_KEY: "sk-ant-test"}))
    plan_events = list(world.events)
    assert "NoActivityUrl" in plan_events
    world.advance(3600)
    plan = world.step()
    assert plan.delete_pods == [] and not plan.scaled_down
    assert world.session.status.phase == "Running"
    assert conditions(world.session)["ActivityReports"] == ("False", "NoActivityUrl")
    assert world.events.count("NoActivityUrl") == 1


def test_hybrid_with_an_activity_url_has_no_activity_condition() -> None:
    world = hybrid_world()
    assert "ActivityReports" not in conditions(world.session)


def test_a_ready_pod_that_stops_being_ready_is_reported_once_and_recovers() -> None:
    """A runner that stops answering its probe, or a node gone silent (the node controller
    marks its pods not ready): not "RunnerStarting", and one Warning, not one per decide."""
    world = World(make_session("LongRunning"))
    world.step()
    world.run_pod()
    world.settle()
    assert world.session.status.phase == "Running"
    world.kubelet(world.live_pod(), phase="Running", ready=False)
    plan = world.step()
    assert world.session.status.phase == "Pending"
    assert conditions(world.session)["Ready"] == ("False", "RunnerNotReady")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "RunnerNotReady")]
    assert world.step().events == []  # still not ready: said once
    assert conditions(world.session)["Ready"] == ("False", "RunnerNotReady")
    world.run_pod()
    world.step()
    assert world.session.status.phase == "Running"
    assert conditions(world.session)["Ready"] == ("True", "Running")


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning"])
def test_a_runner_that_ended_is_not_reported_as_not_ready(pattern: str) -> None:
    """An Ephemeral run that is done (its pod Running and not ready until the kubelet
    reports the exit), or a runner that exited: no RunnerNotReady Warning (found by the
    real-node main job, whose fizzbuzz example posted one)."""
    world = World(make_session(pattern))
    world.step()
    world.run_pod()
    world.settle()
    done = {"exitCode": 0, "reason": "Completed", "message": ""}
    world.kubelet(world.live_pod(), phase="Running", ready=False, terminated=done)
    plan = world.step()
    assert "RunnerNotReady" not in [e.reason for e in plan.events]
    assert conditions(world.session)["Ready"][1] != "RunnerNotReady"


# --- hostile termination messages ---------------------------------------------------------

HOSTILE_RESULTS = {
    # Nested deeply enough to exhaust the JSON parser's recursion.
    "deeply-nested": '{"subtype": "success", "text": ' + "[" * 5000,
    # Not JSON numbers the API server takes: a status patch with them would fail forever.
    "infinite-cost": '{"subtype": "success", "totalCostUsd": Infinity}',
    "nan-cost": '{"subtype": "success", "totalCostUsd": NaN}',
    "huge-turns": '{"subtype": "success", "numTurns": 99999999999999999999}',
    "huge-tokens": '{"subtype": "success", "usage": {"inputTokens": 1e30}}',
}


@pytest.mark.parametrize("message", HOSTILE_RESULTS.values(), ids=HOSTILE_RESULTS.keys())
@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_ephemeral_outcome_survives_a_hostile_termination_message(message: str, phase: str) -> None:
    world = World(make_session("Ephemeral"))
    world.step()
    name = world.run_pod()
    code = 0 if phase == "Succeeded" else 1
    world.kubelet(
        name,
        phase=phase,
        ready=False,
        terminated={"exitCode": code, "reason": "Completed", "message": message},
    )
    plan = world.step()  # raised RecursionError, or planned a patch the API server refuses
    assert world.session.status.phase == phase
    assert world.session.status.result is None  # not the runner's claim: it did not validate
    assert plan.status_patch is not None
    json.dumps(plan.status_patch, allow_nan=False)  # what the API server would take
    assert [d.name for d in plan.delete_pods] == [name]


def test_crash_loop_detail_survives_a_deeply_nested_log_line() -> None:
    world = World(make_session("LongRunning"))
    world.step()
    world.run_pod()
    world.settle()
    crash_looping_pod(
        world, 3, {"exitCode": 1, "reason": "Error", "message": '{"a": ' + "[" * 5000}
    )
    world.step()
    assert world.session.status.phase == "CrashLooping"
