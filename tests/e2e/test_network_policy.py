"""The session's NetworkPolicy, enforced on the real node by kube-router.

Every target is a server this test made: the fake Anthropic API and two decoys in the
node's "outside" namespace (one on a private address, one on the cloud metadata address),
and pods of its own. Each target is first shown to answer a pod that no policy selects,
so that "closed" from the session's pod means the policy, not a dead server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    FAKE_API_PORT,
    Sessions,
    busybox_pod,
    delete_quietly,
    kubectl,
    probe_from,
    ready_pod,
    spec,
    wait_policy_enforced,
)
from kubernetes import client

from corral.api import runtime
from corral.cluster import node
from corral.testing.kube import wait_for
from corral.testing.outside import Decoy
from testrun import RESTRICTED_LABELS

pytestmark = pytest.mark.e2e

DECOY_PORT = 8089  # the fake API's port: only the address differs
METADATA_PORT = 80


@pytest.fixture(scope="module")
def decoys(node_layout: node.NodeLayout) -> Iterator[dict[str, Decoy]]:
    private = Decoy(node_layout.outside_netns, node.PRIVATE_DECOY_IP, DECOY_PORT).start()
    metadata = Decoy(node_layout.outside_netns, node.METADATA_DECOY_IP, METADATA_PORT).start()
    yield {"private": private, "metadata": metadata}
    private.stop()
    metadata.stop()


def nc(kubeconfig: Path, namespace: str, pod: str, host: str, port: int) -> str:
    """What a busybox pod reads from host:port ("" when it cannot connect)."""
    done = kubectl(kubeconfig, "-n", namespace, "exec", pod, "--", "nc", "-w", "3", host, str(port))
    return done.stdout.strip()


@pytest.fixture
def session_pod(
    operator: Any,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    node_layout: node.NodeLayout,
) -> Any:
    """A LongRunning session's pod, once kube-router has its NetworkPolicy in place.

    (A new pod is not yet covered during the second or so kube-router takes to sync.)
    """
    sessions = Sessions(custom, namespace)
    sessions.create("netcheck", spec("LongRunning"))
    pod = ready_pod(core, namespace, "netcheck")
    wait_policy_enforced(node_layout, pod.status.pod_ip)
    return pod


def test_egress_reaches_only_what_the_policy_allows(
    kubeconfig: Path,
    core: client.CoreV1Api,
    namespace: str,
    session_pod: Any,
    decoys: dict[str, Decoy],
    fake: Any,
) -> None:
    bystander = busybox_pod(
        core,
        namespace,
        "bystander",
        ["nc", "-ll", "-p", "8080", "-e", "echo", "bystander"],
        {"app": "bystander"},
    )
    busybox_pod(core, namespace, "free", ["sleep", "3600"], {"app": "free"})
    targets = {
        "fake API": (node.OUTSIDE_IP, FAKE_API_PORT),
        "private decoy": (node.PRIVATE_DECOY_IP, DECOY_PORT),
        "metadata decoy": (node.METADATA_DECOY_IP, METADATA_PORT),
        "another pod": (bystander.status.pod_ip, 8080),
    }
    # A pod that no policy selects reaches every target: the servers are there.
    assert nc(kubeconfig, namespace, "free", *targets["private decoy"]) == "decoy"
    assert nc(kubeconfig, namespace, "free", *targets["metadata decoy"]) == "decoy"
    assert nc(kubeconfig, namespace, "free", *targets["another pod"]) == "bystander"

    pod = session_pod.metadata.name
    seen = {what: probe_from(kubeconfig, namespace, pod, *where) for what, where in targets.items()}
    print(seen)
    assert seen["fake API"].startswith("open"), seen
    for blocked in ("private decoy", "metadata decoy", "another pod"):
        assert seen[blocked].startswith("closed"), seen
    assert decoys["private"].connections == 1  # only the free pod's
    assert decoys["metadata"].connections == 1
    delete_quietly(core, namespace, "free")
    delete_quietly(core, namespace, bystander.metadata.name)


def test_cluster_dns_answers_the_session_pod(
    kubeconfig: Path, namespace: str, session_pod: Any
) -> None:
    resolve = (
        "import socket; print(socket.gethostbyname('kubernetes.default.svc.cluster.local'),"
        " socket.gethostbyname('kube-dns.kube-system'))"
    )
    done = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "exec",
        session_pod.metadata.name,
        "--",
        "python3",
        "-c",
        resolve,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10.96.0.1", "10.96.0.10"]


def test_only_the_gateway_reaches_the_runner_and_only_with_its_credential(
    kubeconfig: Path,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    operator: Any,
    session_pod: Any,
    request: pytest.FixtureRequest,
) -> None:
    """With the gateway on (the chart's default) the session's NetworkPolicy admits the
    runner port only from the gateway's pods; and the runner itself answers a caller there
    without the session's gateway credential with 401."""
    operator_namespace = operator.namespace
    other = f"{namespace}-other"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels=RESTRICTED_LABELS))
    )
    request.addfinalizer(lambda: core.delete_namespace(other))
    target = (session_pod.status.pod_ip, runtime.RUNNER_PORT)
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{operator.name}-gateway", operator_namespace
    )
    gateway_labels = dict(deployment.spec.selector.match_labels)
    suffix = namespace[-4:]
    outsider = busybox_pod(core, other, "outsider", ["sleep", "3600"], {"app": "outsider"})
    # A pod of the operator's namespace that is not the gateway, and one that carries the
    # gateway's labels (what the policy admits) but not its credential.
    bystander = busybox_pod(
        core, operator_namespace, f"bystander-{suffix}", ["sleep", "3600"], {"app": "x"}
    )
    lookalike = busybox_pod(
        core, operator_namespace, f"lookalike-{suffix}", ["sleep", "3600"], gateway_labels
    )
    for made in (bystander, lookalike):
        request.addfinalizer(
            lambda name=made.metadata.name: delete_quietly(core, operator_namespace, name)
        )

    def http(ns: str, pod: str, path: str) -> str:
        ask = f"GET {path} HTTP/1.0\\r\\n\\r\\n"
        done = kubectl(
            kubeconfig,
            "-n",
            ns,
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            f"(printf '{ask}'; sleep 1) | nc -w 3 {target[0]} {target[1]}",
        )
        return done.stdout

    # kube-router adds a new pod's address to the policy's sets within seconds.
    wait_for(
        lambda: "200 OK" in http(operator_namespace, lookalike.metadata.name, "/healthz"),
        timeout=30,
        interval=2,
        what="a pod with the gateway's labels to reach the runner port",
    )
    answer = http(operator_namespace, lookalike.metadata.name, "/v1/status")
    assert answer.split(" ", 2)[1] == "401", answer
    assert "sessionId" not in answer, answer
    assert http(operator_namespace, bystander.metadata.name, "/healthz") == ""
    assert http(other, outsider.metadata.name, "/healthz") == ""
