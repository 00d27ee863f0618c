"""`corral cluster node down` and `corral cluster down` leave nothing of the real node.

A cluster of its own (its own state directory, network namespaces and cgroups), so the
suite's shared real node is never taken down under the other tests. With a pod running
on the node, `node down` must stop every process (agents, containerd, shims, the pod),
unmount everything, remove the namespaces (and with them every iptables rule made in them)
and the cgroups, and delete the Node object; `up` brings the node back; `down` then leaves
nothing at all, and the host's own iptables rules are as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import cleanup, control_plane, images, node, pki
from corral.cluster.build import binary_path
from corral.cluster.layout import REAL_NODE_NAME, Layout
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

POD = """
apiVersion: v1
kind: Pod
metadata: {name: sleeper, namespace: default}
spec:
  nodeSelector: {"corral.dev/real-node": "true"}
  terminationGracePeriodSeconds: 30
  containers:
  - {name: main, image: "IMAGE", imagePullPolicy: Never, command: [sleep, "3600"]}
"""


def _host_iptables() -> str:
    done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    # Only the rules: the header and footer carry timestamps and counters.
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith(("#", ":")))


def _corral(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "cluster", *args],
        env={**os.environ, "CORRAL_STATE_DIR": str(root)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return done, time.monotonic() - started


def _kubectl(
    layout: Layout, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(binary_path("kubectl")), f"--kubeconfig={layout.kubeconfig(pki.ADMIN)}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


@pytest.fixture
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Layout, str]]:
    try:
        node.preflight()
    except node.NodeError as error:
        if os.environ.get("CORRAL_E2E") == "1":
            pytest.fail(f"CORRAL_E2E=1 but the real node cannot run here: {error}")
        pytest.skip(f"no real node on this machine: {error}")
    root = tmp_path_factory.mktemp("nd")  # short: containerd's sockets live under it
    iptables_before = _host_iptables()
    try:
        layout = control_plane.up(root=root, real_node=True, node_with_runner=False)
        yield layout, iptables_before
    finally:
        control_plane.down(root)


def _node_state(where: node.NodeLayout) -> tuple[dict[int, list[str]], set[str]]:
    """The node's processes (pid: command line) and its namespaces' ids, while it is up."""
    ids = {
        found
        for found in (cleanup.netns_id(where.node_netns), cleanup.netns_id(where.outside_netns))
        if found
    }
    return {pid: cleanup.cmdline(pid) for pid in node._node_pids(where, ids)}, ids


def _still_running(processes: dict[int, list[str]]) -> list[str]:
    # A killed child of this process stays a zombie (no command line) until reaped. A process
    # that had no command line when the node was looked at was exiting then (an exec probe's
    # child): "gone" reads the same, so it says nothing either way.
    return [
        " ".join(argv) for pid, argv in processes.items() if argv and cleanup.cmdline(pid) == argv
    ]


def test_node_down_then_down_leave_nothing(own_cluster: tuple[Layout, str]) -> None:
    layout, iptables_before = own_cluster
    where = node.NodeLayout(layout)
    made = _kubectl(
        layout, "apply", "-f", "-", stdin=POD.replace("IMAGE", images.busybox_image().ref)
    )
    assert made.returncode == 0, made.stderr

    def running() -> bool:
        phase = _kubectl(layout, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}")
        return phase.stdout.strip() == "Running"

    wait_for(running, timeout=180, what="a pod Running on the real node")
    pids, ids = _node_state(where)
    shims = [
        p for p, argv in pids.items() if argv and Path(argv[0]).name == "containerd-shim-runc-v2"
    ]
    # What there is to take down: the agents, shims (CoreDNS and the pod), mounts, a rule set.
    assert len(ids) == 2 and len(shims) >= 2, pids
    assert cleanup.mounts_under(where.dir)
    assert node._cgroup_dirs(where, unified=True)
    rules = subprocess.run(
        ["ip", "netns", "exec", where.wiring.node_netns, "iptables-save"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KUBE-SERVICES" in rules  # kube-proxy's, in the node's namespace only
    assert "KUBE-SERVICES" not in _host_iptables()

    done, node_down_seconds = _corral(layout.root, "node", "down")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\n`corral cluster node down` took {node_down_seconds:.1f}s")
    assert node.leftovers(layout, ids) == []
    assert _still_running(pids) == []
    assert not cleanup.pids_in_netns(ids)
    assert cleanup.mounts_under(layout.root) == []
    assert not [d for d in node._cgroup_dirs(where, unified=True) if d.exists()]
    assert node.outside_files(where) == []
    assert _host_iptables() == iptables_before
    gone = _kubectl(layout, "get", "node", REAL_NODE_NAME)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
    # The control plane is still up, the KWOK nodes with it.
    assert control_plane.is_up(layout.root) is False  # no real node now
    kwok = _kubectl(layout, "get", "nodes", "-l", "type=kwok", "-o", "name")
    assert kwok.stdout.split() == ["node/kwok-node-0", "node/kwok-node-1"]

    # `up` brings the node back from the state `node down` left.
    control_plane.up(root=layout.root, node_with_runner=False)
    assert control_plane.is_up(layout.root)
    pids, ids = _node_state(where)

    done, down_seconds = _corral(layout.root, "down")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"`corral cluster down` took {down_seconds:.1f}s")
    assert node.leftovers(layout, ids) == []
    assert _still_running(pids) == []
    assert not layout.root.exists()
    assert _host_iptables() == iptables_before
    # Idempotent: a second run finds nothing and says so.
    done, _ = _corral(layout.root, "down")
    assert done.returncode == 0, done.stdout + done.stderr
