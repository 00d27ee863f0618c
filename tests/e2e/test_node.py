"""The real node itself: registered beside the KWOK nodes, running pods that reach the API
server and cluster DNS, with kubectl logs and exec through the API server."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import kubectl
from kubernetes import client

from corral.api import runtime
from corral.cluster import node
from corral.cluster.layout import REAL_NODE_IP, REAL_NODE_NAME
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

READ_VERSION = """
import json, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
with urllib.request.urlopen("https://kubernetes.default.svc/version", context=context) as r:
    print(json.load(r)["gitVersion"])
"""


def test_the_real_node_runs_beside_the_kwok_nodes(core: client.CoreV1Api) -> None:
    real = core.read_node(REAL_NODE_NAME)
    info = real.status.node_info
    assert info.container_runtime_version.startswith("containerd://1.6")
    assert info.kubelet_version.startswith("v1.34")
    assert [a.address for a in real.status.addresses if a.type == "InternalIP"] == [REAL_NODE_IP]
    assert real.metadata.labels[node.NODE_LABEL] == "true"
    assert real.spec.pod_cidr == "10.245.0.0/24"
    assert not real.spec.taints
    assert core.list_node(label_selector="type=kwok").items, "the KWOK nodes are still there"


def test_a_pod_reaches_the_api_server_by_its_service_name(
    core: client.CoreV1Api, namespace: str, kubeconfig: Path
) -> None:
    # The runner image has python and CA certificates; the service account token and the
    # cluster CA are mounted as usual. The name resolves through CoreDNS, the Service IP
    # through kube-proxy, and the address behind it through the node's relay.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="api-reader"),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_selector={node.NODE_LABEL: "true"},
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=runtime.RUNNER_UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            containers=[
                client.V1Container(
                    name="main",
                    image=runtime.DEFAULT_RUNNER_IMAGE,
                    image_pull_policy="Never",
                    command=["python3", "-c", READ_VERSION],
                    security_context=client.V1SecurityContext(
                        allow_privilege_escalation=False,
                        capabilities=client.V1Capabilities(drop=["ALL"]),
                    ),
                )
            ],
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    def finished() -> str | None:
        phase = core.read_namespaced_pod("api-reader", namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_for(finished, timeout=90, what="the pod to finish") == "Succeeded"
    # kubectl logs: the API server reaches the kubelet through its egress selector.
    logs = kubectl(kubeconfig, "-n", namespace, "logs", "api-reader")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip().startswith("v1.34")
