"""Hybrid sessions: scale to zero after idleTimeout, keep the volume, wake on annotation."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from lifecycle_support import (
    PodHistory,
    Sessions,
    Volumes,
    condition,
    condition_is,
    ensure_storage_class,
    event_reasons,
    load_example,
    own_prefix,
    restricted_namespace,
    session_pods,
    wait_event,
)

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess, kwok_operator_config, report_activity

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "repo-janitor"
CLAIM = f"{NAME}-state"
STORAGE_CLASS = "corral-test-manual"


@pytest.fixture
def sessions(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> Iterator[Sessions]:
    core.create_namespaced_secret(namespace, load_example(REPO, "credentials-secret.yaml"))
    ensure_storage_class(api_client, STORAGE_CLASS)
    volumes = Volumes(core, label=namespace, storage_class=STORAGE_CLASS)
    volumes.bind(namespace, [CLAIM], size="1Gi")
    try:
        yield Sessions(custom, namespace)
    finally:
        volumes.delete()


def create_example(sessions: Sessions, idle_timeout: str = "5s", **fields: str) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(load_example(REPO, "hybrid.yaml")["spec"])
    spec["idleTimeout"] = idle_timeout
    spec.update(fields)
    spec["storage"] = {"size": "1Gi", "storageClassName": STORAGE_CLASS}
    return sessions.create(NAME, spec)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def running(sessions: Sessions, core: client.CoreV1Api, old: set[str]) -> str:
    """Wait until the session runs on exactly one pod, none of `old`; its name."""

    def settled() -> str | None:
        pods = session_pods(core, sessions.namespace, NAME)
        if len(pods) != 1 or pods[0].metadata.name in old:
            return None
        status = sessions.status(NAME)
        name: str = pods[0].metadata.name
        if status.get("phase") == "Running" and status.get("podName") == name:
            return name
        return None

    found: str = wait_for(settled, timeout=60, what=f"{NAME} Running on a new pod")
    return found


def idle(sessions: Sessions, core: client.CoreV1Api, timeout: float = 60) -> dict[str, Any]:
    def asleep() -> dict[str, Any] | None:
        status = sessions.status(NAME)
        if status.get("phase") != "Idle" or session_pods(core, sessions.namespace, NAME):
            return None
        return status

    found: dict[str, Any] = wait_for(asleep, timeout=timeout, what=f"{NAME} Idle with no pod")
    return found


def claim_uid(core: client.CoreV1Api, namespace: str) -> str:
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    assert [c.metadata.name for c in claims] == [CLAIM]
    uid: str = claims[0].metadata.uid
    return uid


def mounted_claims(core: client.CoreV1Api, namespace: str, pod: str) -> list[str]:
    body = core.read_namespaced_pod(pod, namespace)
    return [
        v.persistent_volume_claim.claim_name for v in body.spec.volumes if v.persistent_volume_claim
    ]


def report(
    operator: OperatorProcess, sessions: Sessions, pod: str, busy: bool, **fields: object
) -> None:
    """Post a runner activity report with the pod's token; the operator takes it once its
    watch saw the pod."""
    namespace = sessions.namespace
    token = operator.activity_token(namespace, NAME, sessions.get(NAME)["metadata"]["uid"], pod)
    wait_for(
        lambda: report_activity(operator.url, namespace, NAME, pod, busy, token, **fields) == 202,
        timeout=30,
        what=f"the operator to accept an activity report from {pod}",
    )


def test_idle_timeout_scales_to_zero_and_keeps_the_volume(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    created = create_example(sessions)
    first = running(sessions, core, set())
    awake_at = time.monotonic()
    uid = claim_uid(core, namespace)
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim(CLAIM, namespace).status.phase == "Bound"
        ),
        timeout=60,
        what="the claim to bind",
    )
    assert mounted_claims(core, namespace, first) == [CLAIM]
    status = sessions.status(NAME)
    assert status["pvcName"] == CLAIM
    assert "lastActivityTime" in status

    status = idle(sessions, core)
    asleep_after = time.monotonic() - awake_at
    print(f"Idle {asleep_after:.1f}s after Running (idleTimeout 5s)")
    assert asleep_after >= 3.5  # 5 s from the pod's start, which came before Running
    assert condition_is(status, "Idle", "True", "IdleTimeout")
    assert condition_is(status, "Ready", "False", "Idle")
    assert "idleSince" in status and "lastActivityTime" in status
    assert parse(status["idleSince"]) >= parse(status["lastActivityTime"])
    assert (parse(status["idleSince"]) - parse(status["lastActivityTime"])).total_seconds() >= 5
    assert "podName" not in status
    assert "wakeCount" not in status
    wait_for(
        lambda: event_reasons(core, namespace, NAME).count("ScaledDown") >= 1,
        timeout=30,
        what="ScaledDown Events",
    )
    assert event_reasons(core, namespace, NAME).count("ScaledDown") == 1

    # The volume stays, the same object, still owned by the session.
    claim = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
    assert claim.metadata.uid == uid
    assert claim.metadata.deletion_timestamp is None
    assert claim.metadata.owner_references[0].uid == created["metadata"]["uid"]
    # And it stays asleep.
    time.sleep(6)
    assert session_pods(core, namespace, NAME) == []
    assert sessions.status(NAME)["phase"] == "Idle"


def test_busy_runner_stays_awake_past_the_timeout(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    namespace = sessions.namespace
    create_example(sessions)
    pod = running(sessions, core, set())
    report(operator, sessions, pod, busy=True)
    time.sleep(12)  # more than twice the idle timeout
    status = sessions.status(NAME)
    assert status["phase"] == "Running"
    assert [p.metadata.name for p in session_pods(core, namespace, NAME)] == [pod]
    assert "ScaledDown" not in event_reasons(core, namespace, NAME)

    done = time.monotonic()
    report(operator, sessions, pod, busy=False)
    status = idle(sessions, core)
    slept_after = time.monotonic() - done
    print(f"Idle {slept_after:.1f}s after the runner stopped being busy (idleTimeout 5s)")
    assert slept_after >= 4
    # The runner's report moved the idle clock.
    assert (parse(status["idleSince"]) - parse(status["lastActivityTime"])).total_seconds() >= 5


def test_background_tasks_keep_the_session_awake_for_the_background_task_timeout(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    """An idle runner whose agent left a background task running and scheduled a wakeup:
    status shows both, the session sleeps after backgroundTaskTimeout (12 s) rather than
    idleTimeout (5 s), and the Event says what ended with the pod."""
    namespace = sessions.namespace
    create_example(sessions, backgroundTaskTimeout="12s")
    pod = running(sessions, core, set())
    reported = time.monotonic()
    report(operator, sessions, pod, busy=False, backgroundTasks=1, scheduledWakeups=1)
    wait_for(
        lambda: (
            (
                sessions.status(NAME).get("backgroundTasks"),
                sessions.status(NAME).get("scheduledWakeups"),
            )
            == (1, 1)
        ),
        timeout=30,
        what="status.backgroundTasks and status.scheduledWakeups 1",
    )
    status = idle(sessions, core)
    slept_after = time.monotonic() - reported
    print(f"Idle {slept_after:.1f}s after a report of one background task (timeout 12s)")
    assert slept_after >= 11
    assert "backgroundTasks" not in status and "scheduledWakeups" not in status
    (message,) = [
        e.message
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "ScaledDown" and e.involved_object.name == NAME
    ]
    assert "backgroundTaskTimeout 12s: background tasks running: 1, wakeups scheduled: 1" in message


def test_a_sleeping_session_is_woken_ahead_of_its_agents_durable_task(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    """The runner reports when its agent's durable task is due; the session sleeps after
    idleTimeout (5 s) as usual and is woken the operator's lead (3 s here) before the task,
    which only a running CLI runs, and the Event and the Idle condition say why."""
    namespace = sessions.namespace
    create_example(sessions)
    first = running(sessions, core, set())
    due = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)
    due_text = due.strftime("%Y-%m-%dT%H:%M:%SZ")
    report(operator, sessions, first, busy=False, nextDurableWakeup=due.isoformat())
    wait_for(
        lambda: sessions.status(NAME).get("nextDurableWakeupTime") == due_text,
        timeout=30,
        what="status.nextDurableWakeupTime",
    )
    asleep = idle(sessions, core)
    assert asleep["nextDurableWakeupTime"] == due_text  # kept while asleep
    scaled_down = wait_event(core, namespace, NAME, "ScaledDown")
    wake_at = due - timedelta(seconds=3)
    assert (
        f"it wakes at {wake_at.strftime('%Y-%m-%dT%H:%M:%SZ')} for its agent's durable task "
        f"due {due_text}" in scaled_down.message
    )
    second = running(sessions, core, {first})
    created = core.read_namespaced_pod(second, namespace).metadata.creation_timestamp
    assert created >= wake_at - timedelta(seconds=1)  # not before it was time
    status = sessions.status(NAME)
    assert status["wakeCount"] == 1
    idle_condition = condition(status, "Idle")
    assert idle_condition is not None
    assert idle_condition["message"] == f"woken by its agent's durable task due {due_text}"
    wait_event(core, namespace, NAME, "WokenForSchedule")


def test_busy_report_of_a_lost_pod_does_not_keep_its_successor_awake(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    namespace = sessions.namespace
    create_example(sessions, idle_timeout="4s")
    first = running(sessions, core, set())
    report(operator, sessions, first, busy=True)
    core.delete_namespaced_pod(first, namespace)  # the busy runner's pod is lost
    running(sessions, core, {first})
    # The new runner says nothing; it is not busy, so it sleeps after the timeout.
    idle(sessions, core, timeout=30)


def test_wake_brings_a_new_pod_on_the_same_volume(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    create_example(sessions)
    first = running(sessions, core, set())
    uid = claim_uid(core, namespace)
    asleep = idle(sessions, core)

    sessions.wake(NAME, "first-wake")
    second = running(sessions, core, {first})
    status = sessions.status(NAME)
    assert mounted_claims(core, namespace, second) == [CLAIM]
    assert claim_uid(core, namespace) == uid
    assert status["wakeCount"] == 1
    assert status["observedWake"] == "first-wake"
    assert "idleSince" not in status
    assert parse(status["lastActivityTime"]) > parse(asleep["lastActivityTime"])
    assert condition_is(status, "Idle", "False", "Woken")
    assert condition_is(status, "Ready", "True", "Running")
    wait_event(core, namespace, NAME, "Woken")  # Events follow the status write

    # It goes back to sleep; the same annotation value does not wake it again.
    idle(sessions, core)
    time.sleep(3)
    assert session_pods(core, namespace, NAME) == []
    assert sessions.status(NAME)["wakeCount"] == 1


def test_a_10_kib_wake_value_wakes_once_and_keeps_status_writable(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    """Fix: the value was copied into status.observedWake (maxLength 256): every later status
    patch got 422, so the session never showed its wake nor went back to sleep."""
    create_example(sessions)
    first = running(sessions, core, set())
    idle(sessions, core)
    sessions.wake(NAME, "w" * 10 * 1024)
    running(sessions, core, {first})
    status = sessions.status(NAME)
    assert status["wakeCount"] == 1
    assert status["observedWake"].startswith("sha256:") and len(status["observedWake"]) <= 256
    # Later status writes go through: it sleeps again, and the same value does not wake it.
    idle(sessions, core)
    time.sleep(3)
    assert session_pods(core, sessions.namespace, NAME) == []
    assert sessions.status(NAME)["wakeCount"] == 1


def test_twenty_sleep_wake_cycles_leave_no_strays(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    checks = 0
    cycle_seconds: list[float] = []
    with PodHistory(core, namespace) as history:
        create_example(sessions)
        pod = running(sessions, core, set())
        uid = claim_uid(core, namespace)
        seen = {pod}

        def check() -> None:
            """At any moment: at most one pod, and the one volume."""
            nonlocal checks
            checks += 1
            pods = session_pods(core, namespace, NAME)
            assert len(pods) <= 1, [p.metadata.name for p in pods]
            assert claim_uid(core, namespace) == uid

        def asleep() -> bool:
            check()
            status = sessions.status(NAME)
            return status.get("phase") == "Idle" and not session_pods(core, namespace, NAME)

        def awake() -> str | None:
            check()
            return _new_running(sessions, core, seen)

        for cycle in range(1, 21):
            started = time.monotonic()
            wait_for(asleep, timeout=60, what=f"sleep {cycle}")
            sessions.wake(NAME, f"wake-{cycle}")
            pod = wait_for(awake, timeout=60, what=f"wake {cycle}")
            seen.add(pod)
            assert mounted_claims(core, namespace, pod) == [CLAIM]
            assert sessions.status(NAME)["wakeCount"] == cycle
            cycle_seconds.append(time.monotonic() - started)

        idle(sessions, core)
    status = sessions.status(NAME)
    assert status["wakeCount"] == 20
    assert status["phase"] == "Idle"
    assert session_pods(core, namespace, NAME) == []
    assert claim_uid(core, namespace) == uid
    assert len(seen) == 21
    assert history.pods_ever(NAME) == 21
    assert history.most_at_once[NAME] == 1
    reasons = event_reasons(core, namespace, NAME)
    assert reasons.count("ScaledDown") == 21
    assert reasons.count("Woken") == 20
    mean = sum(cycle_seconds) / len(cycle_seconds)
    print(
        f"20 cycles, {checks} checks: cycle mean {mean:.1f}s, "
        f"min {min(cycle_seconds):.1f}s, max {max(cycle_seconds):.1f}s (idleTimeout 5s)"
    )
    assert condition(status, "Idle") is not None


def _new_running(sessions: Sessions, core: client.CoreV1Api, seen: set[str]) -> str | None:
    pods = session_pods(core, sessions.namespace, NAME)
    if len(pods) != 1 or pods[0].metadata.name in seen:
        return None
    status = sessions.status(NAME)
    name: str = pods[0].metadata.name
    return name if status.get("phase") == "Running" and status.get("podName") == name else None


@pytest.fixture
def no_url_sessions(
    kubeconfig: Path,
    crd: None,
    api_client: client.ApiClient,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> Iterator[Sessions]:
    """Sessions of an operator run as the README's existing-cluster steps run it: out of the
    cluster, with no activity URL in its config."""
    prefix = own_prefix()
    system = restricted_namespace(core, f"{prefix}system")
    namespace = restricted_namespace(core, f"{prefix}sessions")
    ensure_storage_class(api_client, STORAGE_CLASS)
    volumes = Volumes(core, label=f"{prefix}pv", storage_class=STORAGE_CLASS)
    volumes.bind(namespace, [CLAIM], size="1Gi")
    core.create_namespaced_secret(namespace, load_example(REPO, "credentials-secret.yaml"))
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        config=kwok_operator_config(system, activityUrl=None),
        workdir=tmp_path,
        namespaces=[namespace],
        leader_election=False,
        identity=f"{prefix}no-url",
    ).start()
    try:
        yield Sessions(custom, namespace)
    finally:
        process.stop()
        for name in (namespace, system):
            core.delete_namespace(name, propagation_policy="Background")
        volumes.delete()


def test_without_an_activity_url_a_hybrid_session_is_not_put_to_sleep(
    no_url_sessions: Sessions, core: client.CoreV1Api
) -> None:
    """Before the fix it slept idleTimeout after its pod started, mid-conversation."""
    sessions = no_url_sessions
    namespace = sessions.namespace
    create_example(sessions, idle_timeout="2s")
    pod = running(sessions, core, set())
    status = sessions.wait_status(
        NAME,
        lambda s: condition_is(s, "ActivityReports", "False", "NoActivityUrl"),
        "ActivityReports=False",
    )
    reports = condition(status, "ActivityReports")
    assert reports is not None
    assert "activityUrl" in reports["message"] and "not scaled down" in reports["message"]
    assert condition_is(status, "Ready", "True", "Running")
    # Three idle timeouts later it is still awake, on the same pod.
    time.sleep(6)
    assert sessions.status(NAME)["phase"] == "Running"
    assert [p.metadata.name for p in session_pods(core, namespace, NAME)] == [pod]
    reasons = event_reasons(core, namespace, NAME)
    assert "ScaledDown" not in reasons
    assert reasons.count("NoActivityUrl") == 1


def test_a_pod_held_by_its_volumes_missing_node_says_which_node(
    sessions: Sessions, core: client.CoreV1Api, namespace: str
) -> None:
    """A node-local volume whose node is gone (a local PV, as local-path makes): the real
    scheduler cannot place the pod and says "didn't match PersistentVolume's node
    affinity"; the session says it waits
    for that node and names it (from the claim's selected-node annotation, which the
    scheduler sets when it provisions for a pod)."""
    name, gone = "stranded", "gone-node"
    claim = f"{name}-state"
    volumes = Volumes(core, label=f"{namespace}-gone", storage_class=STORAGE_CLASS)
    volumes.bind(namespace, [claim], size="1Gi", node=gone)
    try:
        spec: dict[str, Any] = copy.deepcopy(load_example(REPO, "hybrid.yaml")["spec"])
        spec["idleTimeout"] = "1h"
        spec["storage"] = {"size": "1Gi", "storageClassName": STORAGE_CLASS}
        sessions.create(name, spec)

        def bound() -> bool:
            try:
                found = core.read_namespaced_persistent_volume_claim(claim, namespace)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            return bool(found.status.phase == "Bound")

        wait_for(bound, timeout=60, what="the claim bound to the volume on the missing node")
        core.patch_namespaced_persistent_volume_claim(
            claim,
            namespace,
            {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": gone}}},
        )
        try:
            # The claim's annotation may reach the operator after the pod's refusal: the
            # first message says "the node its volume is tied to", the next one names it.
            status = sessions.wait_status(
                name,
                lambda s: (
                    condition_is(s, "Ready", "False", "VolumeNodeUnavailable")
                    and f"waiting for node {gone}"
                    in (condition(s, "Ready") or {}).get("message", "")
                ),
                "Ready reason VolumeNodeUnavailable naming the node",
            )
        except TimeoutError:
            pods = [(p.metadata.name, p.status.conditions) for p in session_pods(core, namespace)]
            raise AssertionError((sessions.status(name), pods)) from None
        message = condition(status, "Ready")["message"]  # type: ignore[index]
        assert f"waiting for node {gone}" in message and claim in message, message
        assert "PersistentVolume's node affinity" in message, message  # the scheduler's words
        assert status["phase"] == "Pending"
        event = wait_event(core, namespace, name, "VolumeNodeUnavailable")
        assert event.type == "Warning"
        (pod,) = session_pods(core, namespace, name)
        assert pod.spec.node_name is None  # waiting, not placed elsewhere
    finally:
        sessions.custom.delete_namespaced_custom_object(
            "corral.dev", "v1alpha1", namespace, "agentsessions", name
        )
        volumes.delete()
