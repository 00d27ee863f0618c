"""The local control plane is real Kubernetes: scheduling, KWOK pods, GC, Pod Security."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.cluster import control_plane, pki, ports
from corral.cluster.build import binary_path
from corral.cluster.layout import Layout
from corral.cluster.versions import KUBERNETES_VERSION
from corral.testing.kube import wait_for

pytestmark = pytest.mark.integration

KWOK_TOLERATION = client.V1Toleration(
    key="kwok.x-k8s.io/node", operator="Equal", value="fake", effect="NoSchedule"
)


def restricted_container(name: str = "main") -> client.V1Container:
    return client.V1Container(
        name=name,
        image="registry.invalid/none:1",
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=1000,
            allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(binary_path("kubectl")), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_readyz_through_kubectl(kubeconfig: Path) -> None:
    done = kubectl(kubeconfig, "get", "--raw", "/readyz")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_versions_are_stamped(kubeconfig: Path) -> None:
    done = kubectl(kubeconfig, "version", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert f'"gitVersion": "{KUBERNETES_VERSION}"' in done.stdout.replace(": ", ": ")
    # Both the client and the server report the pinned version, not v0.0.0.
    assert done.stdout.count(KUBERNETES_VERSION) >= 2


def test_two_fake_nodes_are_ready(core: client.CoreV1Api) -> None:
    nodes = core.list_node(label_selector="type=kwok").items
    assert len(nodes) >= 2
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions or []}
        assert ready.get("Ready") == "True", node.metadata.name
        assert node.status.allocatable["cpu"] == "32"


def test_owned_pod_is_scheduled_run_and_garbage_collected(
    core: client.CoreV1Api, namespace: str
) -> None:
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="owned",
            owner_references=[
                client.V1OwnerReference(
                    api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                )
            ],
        ),
        spec=client.V1PodSpec(
            containers=[restricted_container()],
            tolerations=[KWOK_TOLERATION],
            automount_service_account_token=False,
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    def running() -> client.V1Pod | None:
        current = core.read_namespaced_pod("owned", namespace)
        return current if current.status.phase == "Running" else None

    bound = wait_for(running, timeout=60, what="pod Running on a KWOK node")
    assert bound.spec.node_name in control_plane.FAKE_NODES

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def collected() -> bool:
        try:
            core.read_namespaced_pod("owned", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(collected, timeout=60, what="garbage collection of the owned pod")


def test_restricted_namespace_rejects_privileged_pod(
    core: client.CoreV1Api, namespace: str
) -> None:
    container = client.V1Container(
        name="bad",
        image="registry.invalid/none:1",
        security_context=client.V1SecurityContext(privileged=True),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="privileged"),
        spec=client.V1PodSpec(containers=[container], tolerations=[KWOK_TOLERATION]),
    )
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod(namespace, pod)
    assert raised.value.status == 403
    message = json.loads(raised.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "bad" must not set securityContext.privileged=true)' in message


def test_up_twice_is_safe_and_status_reports_components(kubeconfig: Path) -> None:
    layout = control_plane.current_layout()
    if layout is None:
        pytest.skip("running against an external cluster")
    pids_before = {s.name: control_plane._pid(layout, s) for s in control_plane.COMPONENTS}
    again = subprocess.run(["corral", "cluster", "up"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    pids_after = {s.name: control_plane._pid(layout, s) for s in control_plane.COMPONENTS}
    assert pids_before == pids_after
    status = subprocess.run(["corral", "cluster", "status"], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    for spec in control_plane.COMPONENTS:
        assert spec.name in status.stdout
    assert status.stdout.count("healthy") == len(control_plane.COMPONENTS)
    printed = subprocess.run(["corral", "cluster", "kubeconfig"], capture_output=True, text=True)
    assert printed.stdout.strip() == str(kubeconfig)


def test_a_block_stops_the_cluster_it_started_and_leaves_one_it_found(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the suites and the benchmarks run in: a developer's cluster is used and left up,
    # a cluster the block started is stopped when the block ends, even by an error.
    found = control_plane.current_layout()
    if found is None:
        pytest.skip("running against an external cluster")
    monkeypatch.delenv("CORRAL_KEEP_CLUSTER", raising=False)
    with control_plane.running() as layout:
        assert layout.root == found.root
    assert control_plane.is_up()
    own = tmp_path / "own"
    with pytest.raises(RuntimeError, match="the benchmark failed"), control_plane.running(own):
        assert control_plane.is_up(own)
        raise RuntimeError("the benchmark failed")
    assert not control_plane.is_up(own)
    assert not own.exists()


def _free_port_base(count: int = len(ports.DEFAULT_PORTS)) -> int:
    """A base port with `count` free ports after it (now; the race is what is tested)."""
    for _ in range(50):
        base = ports.any_free_port()
        if base + count < 65535 and all(ports.port_free(base + i) for i in range(count)):
            return base
    pytest.skip("no run of free ports on this machine")


def test_two_clusters_started_at_the_same_moment_get_ports_of_their_own(tmp_path: Path) -> None:
    # Two `up`s in different state directories, started together and preferring the same
    # ports (as two fresh clusters prefer 6443): each must end up on ports of its own, with
    # its own etcd behind its own API server, and go down leaving nothing.
    roots = [tmp_path / "a", tmp_path / "b"]
    env = {**os.environ, ports.PORT_BASE_ENV: str(_free_port_base())}
    env.pop("CORRAL_STATE_DIR", None)
    try:
        started = [
            subprocess.Popen(
                [sys.executable, "-m", "corral.cli", "cluster", "up", "--timeout", "240"],
                env={**env, "CORRAL_STATE_DIR": str(root)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for root in roots
        ]
        outputs = [proc.communicate(timeout=600)[0] for proc in started]
        for proc, output in zip(started, outputs, strict=True):
            assert proc.returncode == 0, output
        layouts = [Layout.load(root) for root in roots]
        assert layouts[0] is not None and layouts[1] is not None
        assert not set(layouts[0].ports.values()) & set(layouts[1].ports.values())
        kubeconfigs = [layout.kubeconfig(pki.ADMIN) for layout in layouts]
        for kubeconfig in kubeconfigs:
            done = kubectl(kubeconfig, "get", "--raw", "/readyz")
            assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
        # Each API server has its own etcd: what one stores, the other does not see.
        made = kubectl(kubeconfigs[0], "create", "namespace", "only-in-a")
        assert made.returncode == 0, made.stderr
        other = kubectl(kubeconfigs[1], "get", "namespace", "only-in-a")
        assert other.returncode != 0 and "NotFound" in other.stderr
    finally:
        left = [control_plane.down(root) for root in roots]
    assert left == [[], []]
    assert not any(root.exists() for root in roots)
