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
    condition_is,
    event_reasons,
    fail_pod,
    load_example,
    session_pods,
    terminate_pod,
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
    assert "PodLost" in event_reasons(core, namespace, NAME)


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
    assert "Suspended" in event_reasons(core, namespace, NAME)
    time.sleep(3)  # and it stays stopped
    assert session_pods(core, namespace, NAME) == []
    assert sessions.status(NAME)["phase"] == "Suspended"

    sessions.patch(NAME, {"spec": {"suspend": False}})
    back = running_on_a_new_pod(sessions, core, {first})
    assert back != first
    status = sessions.status(NAME)
    assert "restarts" not in status, "a resume is not a restart"
    assert condition_is(status, "Ready", "True", "Running")
    assert "PodResumed" in event_reasons(core, namespace, NAME)
