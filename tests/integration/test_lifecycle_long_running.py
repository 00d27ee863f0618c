"""LongRunning sessions: one pod kept alive, replaced when lost, stopped by spec.suspend."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from lifecycle_support import (
    KubeletStandIn,
    PodHistory,
    Sessions,
    condition,
    condition_is,
    event_reasons,
    fail_pod,
    load_example,
    runner_status,
    session_pods,
    set_pod_status,
    small_resources,
    terminate_pod,
    wait_event,
)

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "docs-assistant"


@pytest.fixture
def sessions(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> Iterator[Sessions]:
    core.create_namespaced_secret(namespace, load_example(REPO, "credentials-secret.yaml"))
    with KubeletStandIn(core, namespace):
        yield Sessions(custom, namespace)


def create_example(sessions: Sessions) -> None:
    spec: dict[str, Any] = copy.deepcopy(load_example(REPO, "long-running.yaml")["spec"])
    sessions.create(NAME, spec)


def live_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    return [p for p in session_pods(core, namespace, NAME) if not p.metadata.deletion_timestamp]


def running_on_a_new_pod(sessions: Sessions, core: client.CoreV1Api, old: set[str]) -> str:
    """Wait until the session runs on exactly one pod that is none of `old`."""

    def settled() -> str | None:
        pods = session_pods(core, sessions.namespace, NAME)
        status = sessions.status(NAME)
        if len(pods) != 1 or pods[0].metadata.name in old:
            return None
        name: str = pods[0].metadata.name
        ok = status.get("phase") == "Running" and status.get("podName") == name
        return name if ok else None

    found: str = wait_for(settled, timeout=60, what=f"{NAME} Running on a new pod")
    return found


def test_deleted_pod_is_recreated_and_counted(sessions: Sessions, core: client.CoreV1Api) -> None:
    namespace = sessions.namespace
    with PodHistory(core, namespace) as history:
        create_example(sessions)
        first = running_on_a_new_pod(sessions, core, set())
        assert "restarts" not in sessions.status(NAME)

        core.delete_namespaced_pod(first, namespace)
        second = running_on_a_new_pod(sessions, core, {first})
        status = sessions.status(NAME)
        assert status["restarts"] == 1
        assert condition_is(status, "Ready", "True", "Running")

        core.delete_namespaced_pod(second, namespace)
        third = running_on_a_new_pod(sessions, core, {first, second})
        assert sessions.status(NAME)["restarts"] == 2

        time.sleep(3)  # nothing else happens once it runs again
        assert [p.metadata.name for p in session_pods(core, namespace, NAME)] == [third]
    assert history.pods_ever(NAME) == 3
    assert history.most_at_once[NAME] == 1, "a new pod only once its predecessor is gone"
    wait_for(
        lambda: event_reasons(core, namespace, NAME).count("PodLost") >= 2,
        timeout=30,
        what="PodLost Events",
    )
    assert event_reasons(core, namespace, NAME).count("PodLost") == 2


def evict(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    fail_pod(core, namespace, pod, "Evicted")


def crash(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    terminate_pod(core, namespace, pod, phase="Failed", exit_code=1, reason="Error")


@pytest.mark.parametrize("end", [evict, crash], ids=["evicted", "failed"])
def test_ended_pod_is_replaced(sessions: Sessions, core: client.CoreV1Api, end: Any) -> None:
    namespace = sessions.namespace
    create_example(sessions)
    first = running_on_a_new_pod(sessions, core, set())
    end(core, namespace, first)
    second = running_on_a_new_pod(sessions, core, {first})
    assert second != first
    status = sessions.status(NAME)
    assert status["restarts"] == 1
    assert status["phase"] == "Running"
    wait_event(core, namespace, NAME, "PodLost")  # Events follow the status write


def test_suspend_stops_the_pod_and_resume_brings_it_back(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    create_example(sessions)
    first = running_on_a_new_pod(sessions, core, set())

    sessions.patch(NAME, {"spec": {"suspend": True}})
    sessions.wait_phase(NAME, "Suspended")
    wait_for(
        lambda: session_pods(core, namespace, NAME) == [], timeout=60, what="the pod to be gone"
    )
    status = sessions.status(NAME)
    assert "podName" not in status
    assert condition_is(status, "Ready", "False", "Suspended")
    wait_event(core, namespace, NAME, "Suspended")  # Events follow the status write
    time.sleep(3)  # and it stays stopped
    assert session_pods(core, namespace, NAME) == []
    assert sessions.status(NAME)["phase"] == "Suspended"

    sessions.patch(NAME, {"spec": {"suspend": False}})
    back = running_on_a_new_pod(sessions, core, {first})
    assert back != first
    status = sessions.status(NAME)
    assert "restarts" not in status, "a resume is not a restart"
    assert condition_is(status, "Ready", "True", "Running")
    wait_event(core, namespace, NAME, "PodResumed")  # Events follow the status write


def crash_loop(core: client.CoreV1Api, namespace: str, pod: str, last: dict[str, Any]) -> None:
    """The kubelet's report of a runner that keeps exiting: restarted in place, in back-off."""
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [
            {
                **runner_status(
                    {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}}
                ),
                "restartCount": 4,
                "lastState": {"terminated": last},
            }
        ],
    }
    for _ in range(5):
        # The phase stays Running, which set_pod_status cannot tell from KWOK's own status.
        set_pod_status(core, namespace, pod, status)
        time.sleep(1.0)
        now = core.read_namespaced_pod_status(pod, namespace).status
        if now.container_statuses and now.container_statuses[0].restart_count == 4:
            return
    raise AssertionError(f"pod {pod} did not keep the crash-loop status")


@pytest.mark.parametrize(
    ("last", "says"),
    [
        (
            {"exitCode": 137, "reason": "OOMKilled"},
            ["OOMKilled", "spec.resources.memory 2Gi"],
        ),
        (
            {
                "exitCode": 1,
                "reason": "Error",
                "message": "Traceback (most recent call last):\n"
                "RuntimeError: cannot reach the API with key sk-ant-api03-Zz9Yy8Xx7\n",
            },
            ["Error (exit code 1): RuntimeError: cannot reach the API with key [redacted]"],
        ),
    ],
    ids=["oom-killed", "error"],
)
def test_crash_looping_runner_is_reported_as_such(
    sessions: Sessions, core: client.CoreV1Api, last: dict[str, Any], says: list[str]
) -> None:
    """Before the fix the session said Pending/RunnerStarting for ever."""
    namespace = sessions.namespace
    create_example(sessions)  # the example asks for 2Gi of memory
    pod = running_on_a_new_pod(sessions, core, set())
    crash_loop(core, namespace, pod, last)
    status = sessions.wait_phase(NAME, "CrashLooping")["status"]
    assert condition_is(status, "Ready", "False", "CrashLooping")
    assert condition_is(status, "PodReady", "False", "CrashLooping")
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert "restarted 4 times" in message
    for text in says:
        assert text in message
    assert "Zz9Yy8Xx7" not in message
    warning = wait_event(core, namespace, NAME, "CrashLooping")
    assert warning.type == "Warning" and "Zz9Yy8Xx7" not in warning.message
    # One name for who reports it, in both places kubectl and events.k8s.io read.
    assert warning.source.component == warning.reporting_component == "corral.dev/operator"
    # Restarting in place keeps the workspace: the pod is not replaced.
    assert [p.metadata.name for p in live_pods(core, namespace)] == [pod]


def huge_shared_spec() -> dict[str, Any]:
    """More JSON than the pod annotation that carries a spec may hold (200 KiB)."""
    agents = [
        {"name": f"agent-{i}", "prompt": "p" * 8192, "systemPrompt": "s" * 8192} for i in range(16)
    ]
    return {"pattern": "Shared", "agents": agents, "resources": small_resources()}


def test_spec_too_large_is_reported_and_not_retried_until_it_changes(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    """Before the fix: logged and retried for ever, with no condition and no Event."""
    namespace = sessions.namespace
    name = "too-large"
    sessions.create(name, huge_shared_spec())
    status = sessions.wait_status(
        name,
        lambda s: condition_is(s, "SpecAccepted", "False", "SpecTooLarge"),
        "SpecAccepted=False",
    )
    assert status["phase"] == "Pending"
    assert condition_is(status, "Ready", "False", "SpecTooLarge")
    accepted = next(c for c in status["conditions"] if c["type"] == "SpecAccepted")
    assert "bytes as JSON" in accepted["message"]
    warning = wait_event(core, namespace, name, "SpecTooLarge")
    assert warning.type == "Warning"
    assert session_pods(core, namespace, name) == []
    # A reconcile that raises is retried with backoff and counted by exception type.
    assert operator.metric("corral_errors_total", 'reason="RenderError"') == 0
    wait_for(
        lambda: event_reasons(core, namespace, name).count("SpecTooLarge") >= 1,
        timeout=30,
        what="SpecTooLarge Events",
    )
    assert event_reasons(core, namespace, name).count("SpecTooLarge") == 1

    # A shorter spec brings the session back.
    short = [{"name": f"agent-{i}", "prompt": "hi"} for i in range(2)]
    sessions.patch(name, {"spec": {"agents": short}})
    sessions.wait_status(
        name,
        lambda s: s.get("phase") == "Running" and condition(s, "SpecAccepted") is None,
        "Running once the spec fits",
    )
    assert len(session_pods(core, namespace, name)) == 1
