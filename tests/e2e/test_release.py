"""The Helm release itself: what `helm install` made, bad values, an upgrade that every
running session follows, a leader pod killed, and `helm uninstall`.

These tests change the release every other e2e test uses (upgrade, failover, uninstall);
conftest.py runs this module last, and its tests in order.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import (
    CHART,
    GROUP,
    PLURAL,
    VERSION,
    Release,
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
from kubernetes.client.rest import ApiException

from corral.api import runtime
from corral.cluster import images, node
from corral.cluster.layout import REAL_NODE_NAME, Layout
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

UPGRADED_TAG = "e2e-upgrade"
GATEWAY_PORT = 8080
# Every kind the chart renders, by name as kubectl knows it (monitoring CRs are off).
NAMESPACED_KINDS = (
    "deployments.apps",
    "services",
    "configmaps",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "networkpolicies.networking.k8s.io",
    "poddisruptionbudgets.policy",
    "leases.coordination.k8s.io",
    "replicasets.apps",
    "pods",
)
CLUSTER_KINDS = (
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
)


def pid1(release: Release, pod: str) -> list[str]:
    """PID 1's command line in a pod of the operator image (no shell there, but python3)."""
    done = release.kubectl(
        "exec",
        pod,
        "--",
        "python3",
        "-c",
        "import json; print(json.dumps(open('/proc/1/cmdline').read().split('\\0')[:-1]))",
    )
    assert done.returncode == 0, done.stderr
    argv: list[str] = json.loads(done.stdout)
    return argv


def test_the_operator_runs_as_two_pods_of_the_operator_image(operator: Release) -> None:
    pods = operator.pods()
    assert len(pods) == 2, [p.metadata.name for p in pods]
    leader = operator.wait_leader()
    assert leader in {p.metadata.name for p in pods}
    for pod in pods:
        assert pod.spec.node_name == REAL_NODE_NAME
        assert pod.spec.service_account_name == operator.name
        [container] = pod.spec.containers
        assert container.image == runtime.DEFAULT_OPERATOR_IMAGE
        assert container.command is None and container.args[0] == "operator"
        assert container.security_context.read_only_root_filesystem is True
        # The image's entrypoint: tini as PID 1, `corral operator` its child.
        argv = pid1(operator, pod.metadata.name)
        assert argv[:4] == [*runtime.IMAGE_ENTRYPOINT, "corral", "operator"], argv
        assert f"--identity={pod.metadata.name}" in argv, argv


def test_a_values_file_with_a_wrong_type_or_unknown_key_fails_helm_install(
    operator: Release,
) -> None:
    for values, message in (
        ({"replicaCount": "two"}, "replicaCount"),
        ({"config": {"defaultModle": "x"}}, "defaultModle"),
    ):
        path = operator.values_file(values, "bad")
        done = operator.helm(
            "install",
            "corral-bad",
            str(CHART),
            "-n",
            operator.namespace,
            "-f",
            str(path),
            check=False,
        )
        assert done.returncode != 0
        assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
        assert message in done.stderr, done.stderr
        status = operator.helm("status", "corral-bad", "-n", operator.namespace, check=False)
        assert status.returncode != 0, "nothing was installed"


def test_an_image_that_cannot_be_pulled_shows_in_the_status(
    operator: Release, custom: client.CustomObjectsApi, namespace: str
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("unpullable", spec("LongRunning", image="corral.dev/runner:no-such-tag"))

    def pull_failure() -> dict[str, Any] | None:
        status = sessions.status("unpullable")
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        return ready if ready and ready.get("reason") == "ImagePullFailed" else None

    ready = wait_for(pull_failure, timeout=120, interval=1, what="an ImagePullFailed condition")
    assert ready["status"] == "False"
    # The kubelet's own reason and message, not just a Pending phase.
    assert ready["message"].split(":")[0] in ("ErrImagePull", "ImagePullBackOff"), ready
    assert "no-such-tag" in ready["message"], ready
    assert sessions.status("unpullable")["phase"] == "Pending"


def _tag_runner_image(node_layout: node.NodeLayout, tag: str) -> str:
    """The runner image under a second name in the node's containerd, as a new release's
    image would be there (pinned, like every imported image)."""
    ref = f"{runtime.DEFAULT_RUNNER_IMAGE.rsplit(':', 1)[0]}:{tag}"
    ctr = ["ctr", "--address", str(node_layout.containerd_socket), "-n", "k8s.io", "images"]
    existing = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True, check=True)
    if ref not in existing.stdout.split():
        subprocess.run([*ctr, "tag", runtime.DEFAULT_RUNNER_IMAGE, ref], check=True)
    subprocess.run([*ctr, "label", ref, images.PINNED_LABEL], check=True, capture_output=True)
    return ref


def test_helm_upgrade_reaches_every_running_session(
    operator: Release,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    node_layout: node.NodeLayout,
    kubeconfig: Path,
    fake: Any,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("steady", spec("LongRunning"))
    before = ready_pod(core, namespace, "steady")
    assert before.spec.containers[0].image == runtime.DEFAULT_RUNNER_IMAGE
    wait_policy_enforced(node_layout, before.status.pod_ip)
    gateway = busybox_pod(
        core,
        namespace,
        "gateway",
        ["nc", "-ll", "-p", str(GATEWAY_PORT), "-e", "echo", "gateway"],
        {"app": "gateway"},
    )
    target = (gateway.status.pod_ip, GATEWAY_PORT)
    assert probe_from(kubeconfig, namespace, before.metadata.name, *target).startswith("closed")

    # A new default runner image and a new egress rule for every session, while it runs.
    upgraded = _tag_runner_image(node_layout, UPGRADED_TAG)
    values = copy.deepcopy(operator.values)
    values["runnerImage"] = {"repository": upgraded.rsplit(":", 1)[0], "tag": UPGRADED_TAG}
    values["config"]["extraEgress"] = [
        {
            "namespace": namespace,
            "podLabels": {"app": "gateway"},
            "ports": [{"port": GATEWAY_PORT, "protocol": "TCP"}],
        }
    ]
    operator.upgrade(values)
    operator.wait_leader()

    def replaced() -> Any:
        pod = ready_pod(core, namespace, "steady", timeout=180)
        return pod if pod.spec.containers[0].image == upgraded else None

    after = wait_for(replaced, timeout=240, interval=2, what="steady's pod on the new image")
    assert after.metadata.name != before.metadata.name
    # The operator writes Running once it sees the new pod ready, a moment after the kubelet.
    wait_for(
        lambda: sessions.status("steady").get("phase") == "Running",
        timeout=60,
        what="steady Running on its new pod",
    )
    wait_policy_enforced(node_layout, after.status.pod_ip)
    wait_for(
        lambda: probe_from(kubeconfig, namespace, after.metadata.name, *target).startswith(
            "open gateway"
        ),
        timeout=60,
        interval=2,
        what="the gateway through the new extraEgress rule",
    )
    delete_quietly(core, namespace, "gateway")


def test_killing_the_leader_pod_hands_over_within_the_lease_time(
    operator: Release,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    old = operator.wait_leader()
    lease = operator.lease()
    duration = lease.spec.lease_duration_seconds
    # No grace: the leader cannot hand its Lease over; the standby must wait it out.
    core.delete_namespaced_pod(old, operator.namespace, grace_period_seconds=0)
    killed_at = time.time()

    def new_holder() -> str | None:
        holder = operator.leader()
        return holder if holder and holder != old else None

    new = wait_for(new_holder, timeout=10 * duration, interval=0.5, what="a new leader")
    acquired = operator.lease().spec.acquire_time.timestamp()
    handover = acquired - killed_at
    print(f"handover after {handover:.1f}s (leaseDurationSeconds {duration})")
    assert new != old
    # The standby takes over once the Lease expires: one lease duration after the last
    # renewal it saw, which it sees up to one retry period late and checks every retry
    # period; a few seconds more for a loaded machine's API calls.
    renew = operator.values.get("leaderElection", {}).get("renewSeconds", 2)
    assert handover <= duration + 2 * renew + 5, handover
    # The new leader acts: a new session gets its pod.
    Sessions(custom, namespace).create("after-failover", spec("LongRunning"))
    ready_pod(core, namespace, "after-failover")


def test_helm_uninstall_leaves_what_the_install_doc_says(
    operator: Release,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    kubeconfig: Path,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("survivor", spec("LongRunning"))
    pod = ready_pod(core, namespace, "survivor")
    operator.uninstall()
    instance = f"app.kubernetes.io/instance={operator.name}"

    def chart_objects() -> str:
        namespaced = kubectl(
            kubeconfig,
            "-n",
            operator.namespace,
            "get",
            ",".join(NAMESPACED_KINDS),
            "-l",
            instance,
            "-o",
            "name",
        )
        cluster = kubectl(kubeconfig, "get", ",".join(CLUSTER_KINDS), "-l", instance, "-o", "name")
        assert namespaced.returncode == 0 and cluster.returncode == 0
        return (namespaced.stdout + cluster.stdout).strip()

    # Every object of the release goes (the pods after their grace period).
    wait_for(lambda: chart_objects() == "", timeout=120, interval=2, what="nothing of the chart")
    # What stays: the CRD, the sessions and their children, untouched and unmanaged.
    extensions = client.ApiextensionsV1Api(core.api_client)
    assert extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "survivor")
    still = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert still.status.phase == "Running" and not still.metadata.deletion_timestamp
    children = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "get",
        "services,networkpolicies",
        "-l",
        "corral.dev/session=survivor",
        "-o",
        "name",
    )
    assert children.stdout.split() and all(
        line.split("/")[0] in ("service", "networkpolicy.networking.k8s.io")
        for line in children.stdout.split()
    ), children.stdout
    try:
        core.read_namespace(operator.namespace)
    except ApiException as error:  # pragma: no cover - the namespace is the fixture's
        raise AssertionError(f"the release namespace went too: {error}") from None


def _grants(operator: Release) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) the chart grants the operator, from the
    chart rendered with the installed values."""
    rendered = operator.helm(
        "template",
        operator.name,
        str(CHART),
        "-n",
        operator.namespace,
        "-f",
        str(operator.values_file(operator.values, "rendered")),
    ).stdout
    grants = set()
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule["verbs"]:
                        grants.add((group, resource, verb))
    return grants


def test_the_operator_used_its_grants_and_was_never_refused(
    operator: Release, real_node_cluster: Layout
) -> None:
    """From the API server's audit log (every request of ServiceAccounts outside
    kube-system, metadata only): what the operator's pods asked for during this run, and
    whether RBAC refused any of it before the uninstall (`helm uninstall` deletes the
    Roles while the operator's pods are still in their grace period)."""
    log = real_node_cluster.audit_log
    if not log.exists():
        pytest.skip(f"no audit log at {log}: the cluster was started without one")
    user = f"system:serviceaccount:{operator.namespace}:{operator.name}"
    used: dict[tuple[str, str, str], int] = {}
    refused = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != user or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        key = (ref.get("apiGroup", ""), resource, event["verb"])
        used[key] = used.get(key, 0) + 1
        decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
        received = datetime.fromisoformat(event["requestReceivedTimestamp"])
        before_uninstall = operator.uninstalled_at is None or received < operator.uninstalled_at
        if decision == "forbid" and before_uninstall:
            refused.append(key)
    grants = _grants(operator)
    report = {
        "used": {"/".join(k): n for k, n in sorted(used.items())},
        "granted but not used": sorted("/".join(k) for k in grants - set(used)),
        "refused": sorted({"/".join(k) for k in refused}),
    }
    (real_node_cluster.root / "logs" / "operator-rbac-usage.json").write_text(
        json.dumps(report, indent=1)
    )
    print(json.dumps(report, indent=1))
    assert used, f"no request of {user} in {log}"
    assert not refused, report
    assert set(used) <= grants, report
