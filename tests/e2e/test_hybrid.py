"""A Hybrid session on a real PersistentVolume keeps its files and history across pods.

Three times: the pod starts on the volume (local-path-provisioner, a directory on the
node), a message makes the agent write a file with Bash, the session goes idle (counted
from the runner's activity reports, which reach the operator's pods) and the pod is
removed, a wake brings a new pod that resumes the same SDK session. Messages go through
the API server's pod proxy, which reaches the pod through the node's relay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PodProxy, Release, Sessions, kubectl, ready_pod, session_pods, spec
from kubernetes import client

from corral.api.units import parse_duration
from corral.cluster import node
from corral.cluster.layout import Layout
from corral.controller.lifecycle import parse_time
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

CYCLES = 3
IDLE = "25s"


def history(body: dict[str, Any]) -> str:
    return json.dumps(body.get("messages", []), ensure_ascii=False)


def test_files_and_history_survive_three_sleep_wake_cycles(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    real_node_cluster: Layout,
    node_layout: node.NodeLayout,
    kubeconfig: Path,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("keeper", spec("Hybrid", idleTimeout=IDLE, storage={"size": "1Gi"}))
    said: list[str] = []
    pods: list[str] = []
    session_ids: set[str] = set()
    for cycle in range(1, CYCLES + 1):
        pod = ready_pod(core, namespace, "keeper").metadata.name
        assert pod not in pods, "a new pod each time"
        pods.append(pod)
        fake.reset()
        fake.add(bash(f"echo content-{cycle} > file-{cycle}.txt && ls"), text(f"wrote {cycle}"))
        message = f"cycle {cycle}: write file {cycle}"
        sent_at = datetime.now(UTC).replace(microsecond=0)
        events = PodProxy(real_node_cluster, namespace, pod).send(message)
        result = events[-1]
        assert result["type"] == "result" and result["subtype"] == "success", events[-3:]
        # The pod's first request carried everything said in earlier pods, in order.
        opening = history(fake.message_bodies()[0])
        positions = [opening.find(earlier) for earlier in said]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), opening[:2000]
        for earlier in range(1, cycle):
            assert f"wrote {earlier}" in opening
        said.append(message)
        status = PodProxy(real_node_cluster, namespace, pod).get("/v1/status")
        session_ids.add(status["sessionId"])

        # Idle: the pod goes, the claim stays. The countdown ran from the runner's own
        # activity reports (they reached the operator's pods through its Service and the
        # session's NetworkPolicy), not from the pod's start: the last activity is the
        # turn just sent, and the session slept only a full idleTimeout after it.
        idle = sessions.wait_phase("keeper", "Idle", timeout=120)
        last_activity = parse_time(idle["lastActivityTime"])
        assert last_activity is not None and last_activity >= sent_at, (idle, sent_at)
        idle_since = parse_time(idle["idleSince"])
        assert idle_since is not None
        assert idle_since - last_activity >= parse_duration(IDLE), idle
        assert idle.get("numTurns", 0) >= 1 and idle["runner"]["sdkVersion"], idle
        wait_for(lambda: session_pods(core, namespace, "keeper") == [], timeout=90)
        sessions.wake("keeper", f"wake-{cycle}")

    assert len(session_ids) == 1, session_ids
    pod = ready_pod(core, namespace, "keeper").metadata.name
    listing = kubectl(kubeconfig, "-n", namespace, "exec", pod, "--", "ls", "/session/workspace")
    assert listing.stdout.split() == [f"file-{n}.txt" for n in range(1, CYCLES + 1)]
    # The files are on a real volume: a directory local-path-provisioner made on the node.
    status = sessions.status("keeper")
    claim = core.read_namespaced_persistent_volume_claim(status["pvcName"], namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    directory = Path(volume.spec.host_path.path)
    assert node_layout.volumes_dir in directory.parents
    assert (directory / "workspace" / "file-2.txt").read_text().strip() == "content-2"
