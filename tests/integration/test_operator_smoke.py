"""The operator reconciles a LongRunning session into its children on the real API server."""

from __future__ import annotations

import pytest
from kubernetes import client

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess

pytestmark = pytest.mark.integration


def test_long_running_session_gets_pod_service_and_policy(
    operator: OperatorProcess,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    session = {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "smoke"},
        "spec": {"pattern": "LongRunning"},
    }
    custom.create_namespaced_custom_object(
        "corral.dev", "v1alpha1", namespace, "agentsessions", session
    )

    def running() -> dict | None:
        body = custom.get_namespaced_custom_object(
            "corral.dev", "v1alpha1", namespace, "agentsessions", "smoke"
        )
        return body if body.get("status", {}).get("phase") == "Running" else None

    body = wait_for(running, timeout=30, what="session Running")
    pods = core.list_namespaced_pod(namespace).items
    assert [p.metadata.name for p in pods] == [body["status"]["podName"]]
    assert pods[0].metadata.owner_references[0].uid == body["metadata"]["uid"]
    assert core.read_namespaced_service(body["status"]["serviceName"], namespace)
