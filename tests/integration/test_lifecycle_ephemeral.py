"""Ephemeral sessions against the real API server, the real operator and KWOK's pods.

The test plays the kubelet: it ends the session's pod the way a kubelet reports a
finished, killed, evicted or stuck container, and the operator has to turn that into
status, conditions and Events.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from lifecycle_support import (
    KubeletStandIn,
    PhaseHistory,
    PodHistory,
    Sessions,
    condition,
    condition_is,
    event_reasons,
    events,
    fail_pod,
    image_pull_failure,
    load_example,
    session_pods,
    terminate_pod,
    termination_message,
    wait_event,
)

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sessions(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> Iterator[Sessions]:
    secret = load_example(REPO, "credentials-secret.yaml")
    core.create_namespaced_secret(namespace, secret)
    with KubeletStandIn(core, namespace):
        yield Sessions(custom, namespace)


def example_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(load_example(REPO, "ephemeral.yaml")["spec"])
    spec.update(overrides)
    return spec


def the_pod(core: client.CoreV1Api, namespace: str, session: str) -> Any:
    def one() -> Any:
        pods = [
            p for p in session_pods(core, namespace, session) if not p.metadata.deletion_timestamp
        ]
        return pods[0] if len(pods) == 1 else None

    return wait_for(one, timeout=60, what=f"one live pod of {session}")


def pods_gone(core: client.CoreV1Api, namespace: str, session: str) -> None:
    wait_for(
        lambda: session_pods(core, namespace, session) == [],
        timeout=60,
        what=f"the pods of {session} to be removed",
    )


def test_example_runs_pending_running_succeeded_then_ttl_deletes_it(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    # The example as written, with a TTL a test can wait for. Its Secret is applied after
    # the session (as a GitOps sync may do): the session waits in Pending meanwhile.
    core.delete_namespaced_secret("anthropic-api-key", namespace)
    with PhaseHistory(sessions.custom, namespace, "fizzbuzz") as history:
        sessions.create("fizzbuzz", example_spec(ttlSecondsAfterFinished=6))
        pending = sessions.wait_status(
            "fizzbuzz",
            lambda s: (
                s.get("phase") == "Pending"
                and condition_is(s, "CredentialsReady", "False", "SecretNotFound")
            ),
            "Pending while the Secret is missing",
        )
        assert session_pods(core, namespace, "fizzbuzz") == []
        assert condition(pending, "Ready")["status"] == "False"
        core.create_namespaced_secret(namespace, load_example(REPO, "credentials-secret.yaml"))

        running = sessions.wait_phase("fizzbuzz", "Running")["status"]
        pod = the_pod(core, namespace, "fizzbuzz")
        assert running["podName"] == pod.metadata.name
        assert condition_is(running, "Ready", "True", "Running")
        assert condition_is(running, "CredentialsReady", "True", "SecretFound")

        terminate_pod(
            core,
            namespace,
            pod.metadata.name,
            phase="Succeeded",
            message=termination_message(),
        )
        done = sessions.wait_phase("fizzbuzz", "Succeeded")
        status = done["status"]
        assert history.phases == ["Pending", "Running", "Succeeded"]

    result = status["result"]
    assert result["subtype"] == "success"
    assert result["numTurns"] == 2
    assert result["totalCostUsd"] == pytest.approx(0.0123)
    assert result["sessionId"] == "3f1c2a9e-0d7b-4c55-9e51-7a2b8c0d1e2f"
    assert result["usage"]["inputTokens"] == 1200
    assert status["sessionId"] == result["sessionId"]
    assert status["numTurns"] == 2
    assert status["totalCostUsd"] == pytest.approx(0.0123)
    assert status["attempts"] == 1
    assert "completionTime" in status
    assert "podName" not in status
    assert condition_is(status, "Complete", "True", "Succeeded")
    assert condition(status, "Failed") is None
    wait_event(core, namespace, "fizzbuzz", "Succeeded")  # Events follow the status write

    # Recorded, then removed.
    pods_gone(core, namespace, "fizzbuzz")

    # ttlSecondsAfterFinished: the session deletes itself (its children go with it).
    wait_for(
        lambda: sessions.find("fizzbuzz") is None,
        timeout=60,
        what="the TTL to delete the finished session",
    )
    wait_for(
        lambda: core.list_namespaced_service(namespace).items == [],
        timeout=60,
        what="garbage collection of the session's Service",
    )


def test_example_with_its_secret_in_place_succeeds(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    with PhaseHistory(sessions.custom, namespace, "fizzbuzz") as history:
        sessions.create("fizzbuzz", example_spec())
        sessions.wait_phase("fizzbuzz", "Running")
        pod = the_pod(core, namespace, "fizzbuzz")
        terminate_pod(
            core, namespace, pod.metadata.name, phase="Succeeded", message=termination_message()
        )
        # The pod goes only once its outcome is in status: the moment it is gone, the
        # result is there to read.
        pods_gone(core, namespace, "fizzbuzz")
        status = sessions.status("fizzbuzz")
        assert status["phase"] == "Succeeded"
        assert status["result"]["numTurns"] == 2
        assert status["result"]["sessionId"] == "3f1c2a9e-0d7b-4c55-9e51-7a2b8c0d1e2f"
    print(f"phases seen: {history.phases}")
    # The pod starts within milliseconds on KWOK, so the first "Pending" may never be
    # written (the operator holds back a start-up status briefly, b981eda).
    assert history.phases[-2:] == ["Running", "Succeeded"]
    assert set(history.phases) <= {"Pending", "Running", "Succeeded"}
    # No TTL given: a finished session stays.
    time.sleep(3)
    assert sessions.find("fizzbuzz") is not None
    assert session_pods(core, namespace, "fizzbuzz") == []


def oom(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    terminate_pod(core, namespace, pod, phase="Failed", exit_code=137, reason="OOMKilled")


def evicted(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    fail_pod(core, namespace, pod, "Evicted")


def deadline(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    fail_pod(core, namespace, pod, "DeadlineExceeded")


def max_turns(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    message = termination_message(subtype="error_max_turns", numTurns=20, text=None)
    terminate_pod(
        core, namespace, pod, phase="Failed", exit_code=1, reason="Error", message=message
    )


def image_pull(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    image_pull_failure(core, namespace, pod)


FAILURES = {
    "OOMKilled": oom,
    "Evicted": evicted,
    "DeadlineExceeded": deadline,
    "MaxTurnsReached": max_turns,
    "ImagePullFailed": image_pull,
}


@pytest.mark.parametrize("reason", list(FAILURES))
def test_failed_run_reports_its_reason(
    sessions: Sessions, core: client.CoreV1Api, reason: str
) -> None:
    namespace = sessions.namespace
    sessions.create("task", example_spec(retries=0))
    sessions.wait_phase("task", "Running")
    pod = the_pod(core, namespace, "task")
    FAILURES[reason](core, namespace, pod.metadata.name)

    status = sessions.wait_phase("task", "Failed")["status"]
    assert condition_is(status, "Failed", "True", reason), status["conditions"]
    assert condition_is(status, "Ready", "False", reason)
    assert condition(status, "Complete") is None
    assert "completionTime" in status
    assert status["attempts"] == 1
    if reason == "MaxTurnsReached":
        assert status["result"]["subtype"] == "error_max_turns"
        assert status["numTurns"] == 20
    event = wait_event(core, namespace, "task", reason)
    assert event.type == "Warning"
    assert event.involved_object.kind == "AgentSession"
    pods_gone(core, namespace, "task")
    # A failed run is final: no second pod.
    assert session_pods(core, namespace, "task") == []
    assert "Retrying" not in event_reasons(core, namespace, "task")


def test_unschedulable_session_waits_in_pending_with_the_reason(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    resources = {"cpu": "64", "memory": "1Gi", "disk": "2Gi"}  # nodes have 32 CPUs
    sessions.create("huge", example_spec(resources=resources))
    status = sessions.wait_status(
        "huge",
        lambda s: condition_is(s, "PodReady", "False", "Unschedulable"),
        "PodReady reason Unschedulable",
    )
    assert status["phase"] == "Pending"
    assert condition_is(status, "Ready", "False", "Unschedulable")
    assert "Insufficient cpu" in condition(status, "PodReady")["message"]
    event = wait_event(core, namespace, "huge", "Unschedulable")
    assert event.type == "Warning"
    # Still waiting a while later, with one Warning, not one per reconcile.
    pod = the_pod(core, namespace, "huge")
    assert pod.status.phase == "Pending"
    assert sessions.status("huge")["phase"] == "Pending"
    wait_for(
        lambda: event_reasons(core, namespace, "huge").count("Unschedulable") >= 1,
        timeout=30,
        what="Unschedulable Events",
    )
    assert event_reasons(core, namespace, "huge").count("Unschedulable") == 1


def test_retries_make_a_second_pod_then_fail(sessions: Sessions, core: client.CoreV1Api) -> None:
    namespace = sessions.namespace
    with PodHistory(core, namespace) as history:
        first, second = run_two_failing_attempts(sessions, core)
    assert first != second
    # Exactly two pods were ever made, never two at once.
    assert history.pods_ever("flaky") == 2
    assert history.most_at_once["flaky"] == 1


def run_two_failing_attempts(sessions: Sessions, core: client.CoreV1Api) -> tuple[str, str]:
    namespace = sessions.namespace
    sessions.create("flaky", example_spec(retries=1))
    sessions.wait_phase("flaky", "Running")
    first = the_pod(core, namespace, "flaky").metadata.name
    oom(core, namespace, first)

    wait_event(core, namespace, "flaky", "Retrying")

    def second_pod() -> Any:
        pods = session_pods(core, namespace, "flaky")
        return next((p for p in pods if p.metadata.name != first), None)

    second = wait_for(second_pod, timeout=60, what="a second pod").metadata.name
    status = sessions.wait_status(
        "flaky", lambda s: s.get("phase") == "Running" and s.get("podName") == second, "attempt 2"
    )
    assert status["attempts"] == 2
    assert condition(status, "Failed") is None
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod(first, namespace)
    assert gone.value.status == 404

    oom(core, namespace, second)
    status = sessions.wait_phase("flaky", "Failed")["status"]
    assert status["attempts"] == 2
    assert condition_is(status, "Failed", "True", "OOMKilled")
    pods_gone(core, namespace, "flaky")
    reasons = [e.reason for e in sorted(events(core, namespace, "flaky"), key=_event_time)]
    assert reasons.count("Retrying") == 1
    assert reasons.index("Retrying") < reasons.index("OOMKilled")
    return first, second


def _event_time(event: Any) -> Any:
    return (event.last_timestamp or event.event_time, event.metadata.creation_timestamp)


def test_ttl_with_cleanup_children_keeps_the_session_for_gitops(
    sessions: Sessions, core: client.CoreV1Api, api_client: client.ApiClient
) -> None:
    """cleanupAfterFinished: Children: the TTL deletes the Service and NetworkPolicy and
    keeps the session (a GitOps tool would re-create a deleted one and run it again)."""
    namespace = sessions.namespace
    networking = client.NetworkingV1Api(api_client)
    sessions.create(
        "nightly", example_spec(ttlSecondsAfterFinished=2, cleanupAfterFinished="Children")
    )
    sessions.wait_phase("nightly", "Running")
    assert [s.metadata.name for s in core.list_namespaced_service(namespace).items] == ["nightly"]
    pod = the_pod(core, namespace, "nightly")
    terminate_pod(
        core, namespace, pod.metadata.name, phase="Succeeded", message=termination_message()
    )
    sessions.wait_phase("nightly", "Succeeded")
    wait_for(
        lambda: (
            core.list_namespaced_service(namespace).items == []
            and networking.list_namespaced_network_policy(namespace).items == []
        ),
        timeout=60,
        what="the TTL to delete the session's Service and NetworkPolicy",
    )
    wait_event(core, namespace, "nightly", "ChildrenDeleted")
    body = sessions.get("nightly")  # the session itself stays, with its outcome
    assert body["metadata"].get("deletionTimestamp") is None
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["result"]["numTurns"] == 2
    assert "serviceName" not in status and "endpoint" not in status
    # Nothing is re-created, and the prompt never runs again.
    time.sleep(3)
    assert core.list_namespaced_service(namespace).items == []
    assert session_pods(core, namespace, "nightly") == []
    assert sessions.status("nightly")["attempts"] == 1
