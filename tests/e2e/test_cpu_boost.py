"""The start-up CPU boost on the real node: a session pod starts with the operator's start-up
CPU limit (the chart's default), and once its runner is ready the operator lowers it in place
(the pod's `resize` subresource) to the session's own limit: the kubelet applies it to the
running container's CFS quota, without a restart, and the session answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import GatewayClient, Release, Sessions, kubectl, session_pods, spec
from kubernetes import client

from corral.cluster import node
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

CPU = "250m"
# CFS quota per 100 ms period: the chart's default start-up limit (2 CPUs), and the
# session's 250m plus the millicore that keeps the pod Burstable (render.cpu_boost).
BOOSTED_QUOTA = 200_000
SETTLED_QUOTA = 25_100


class QuotaSampler:
    """Reads the runner container's cpu.cfs_quota_us from the node's cgroup tree (cgroup v1,
    the kubelet's cgroupfs driver) every few milliseconds: what the kernel enforced."""

    def __init__(self, layout: node.NodeLayout, pod_uid: str) -> None:
        pod_dir = f"pod{pod_uid}"
        root = Path("/sys/fs/cgroup/cpu") / layout.cgroup_root.lstrip("/")
        self.pattern = f"kubepods/burstable/{pod_dir}/*/cpu.cfs_quota_us"
        self.root = root
        self.seen: list[int] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            for path in self.root.glob(self.pattern):
                try:
                    quota = int(path.read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and (not self.seen or self.seen[-1] != quota):
                    self.seen.append(quota)  # the sandbox (pause) container has none (-1)
            time.sleep(0.005)

    def stop(self) -> list[int]:
        self.stopping.set()
        self.thread.join(timeout=5)
        return self.seen


def quota_inside(kubeconfig: Path, namespace: str, pod: str) -> int:
    done = kubectl(
        kubeconfig, "-n", namespace, "exec", pod, "--", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_pod_starts_boosted_and_settles_at_the_sessions_limit(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    node_layout: node.NodeLayout,
    kubeconfig: Path,
    gateway: GatewayClient,
) -> None:
    body = spec("LongRunning")
    body["resources"] = {**body["resources"], "cpu": CPU}
    Sessions(custom, namespace).create("boosted", body)
    (pod,) = wait_for(
        lambda: session_pods(core, namespace, "boosted") or None,
        timeout=60,
        interval=0.01,
        what="the session's pod",
    )
    sampler = QuotaSampler(node_layout, pod.metadata.uid)
    (container,) = pod.spec.containers
    # Created boosted: the request is the session's, the limit the operator's start-up one.
    assert container.resources.requests["cpu"] == CPU
    assert container.resources.limits["cpu"] in ("2", "2000m")
    assert pod.metadata.uid

    def settled() -> Any:
        current = core.read_namespaced_pod(pod.metadata.name, namespace)
        (status,) = current.status.container_statuses or [None]
        applied = status is not None and status.resources is not None
        if applied and (status.resources.limits or {}).get("cpu") == "251m":
            return current
        return None

    current = wait_for(settled, timeout=300, what="the pod's CPU limit lowered and applied")
    seen = sampler.stop()
    (container,) = current.spec.containers
    assert container.resources.limits["cpu"] == "251m"
    assert container.resources.requests["cpu"] == CPU
    # Same QoS class as it was made with (a resize may not change it), no restart.
    assert current.status.qos_class == "Burstable"
    (status,) = current.status.container_statuses
    assert status.restart_count == 0
    # The kernel's quota: the boost first, then the session's own, in the container itself.
    assert seen[0] == BOOSTED_QUOTA and seen[-1] == SETTLED_QUOTA, seen
    assert quota_inside(kubeconfig, namespace, current.metadata.name) == SETTLED_QUOTA
    pending = [
        c.type
        for c in current.status.conditions or []
        if c.type in ("PodResizePending", "PodResizeInProgress") and c.status == "True"
    ]
    assert not pending
    # The session answers at its own limit.
    fake.add(text("at 251m"))
    reply = gateway.send(namespace, "boosted", "hello")
    assert reply.status == 200 and reply.events[-1]["type"] == "result", reply
    # Resized once: nothing writes the pod at rest.
    version = core.read_namespaced_pod(pod.metadata.name, namespace).metadata.generation
    time.sleep(3)
    assert core.read_namespaced_pod(pod.metadata.name, namespace).metadata.generation == version
