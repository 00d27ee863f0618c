"""corral.testing.load.problems: what the chaos and load tests call "not converged". A
session's phase is the operator's fault only when its pod runs and is ready; a pod Running
but not ready (KWOK never readies a pod again once the node controller marked it not ready)
is the world's, and the message says which pods are not ready."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from corral.testing.load import Expected, problems

UID = "uid-1"


def session(phase: str) -> dict[str, Any]:
    return {"metadata": {"name": "s1", "uid": UID}, "status": {"phase": phase}}


def pod(phase: str, ready: bool) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="s1-abc",
            labels={"corral.dev/session": "s1"},
            owner_references=[
                client.V1OwnerReference(
                    api_version="corral.dev/v1alpha1", kind="AgentSession", name="s1", uid=UID
                )
            ],
        ),
        spec=client.V1PodSpec(containers=[], node_name="kwok-node-0"),
        status=client.V1PodStatus(
            phase=phase,
            conditions=[client.V1PodCondition(type="Ready", status=str(ready))],
        ),
    )


EXPECTED = Expected(awake={"s1"}, asleep=set())


def test_pending_session_with_a_ready_pod_is_the_operators_fault() -> None:
    found = problems(EXPECTED, [session("Pending")], [pod("Running", ready=True)], {})
    assert len(found) == 1
    assert "not true to their pods" in found[0] and "s1-abc Running on kwok-node-0" in found[0]


def test_pending_session_with_a_running_pod_not_ready_waits_for_the_pod() -> None:
    found = problems(EXPECTED, [session("Pending")], [pod("Running", ready=False)], {})
    assert len(found) == 1
    assert "waiting for their pod" in found[0]
    assert "s1-abc Running not ready on kwok-node-0" in found[0]


def test_running_session_with_its_pod_converged() -> None:
    assert problems(EXPECTED, [session("Running")], [pod("Running", ready=True)], {}) == []
