"""A Hybrid session on a real PersistentVolume sleeps on its own and is woken by its user.

Three pods, one conversation: the pod starts on the volume (local-path-provisioner, a
directory on the node), a message makes the agent write a file with Bash, the session goes
idle (counted from the runner's activity reports, which reach the operator's pods) and the
pod is removed. The user then simply talks to the session through the gateway (the API
server's service proxy, a ServiceAccount's token): the gateway wakes it and the reply
arrives in the same stream, from a new pod that resumes the same SDK session with every
file of the earlier pods. The third wake is asked for by ten concurrent requests at once:
it is still one wake.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import GatewayClient, Release, Sessions, ready_pod, session_pods, spec
from kubernetes import client

from corral.api.units import parse_duration
from corral.cluster import node
from corral.controller.lifecycle import parse_time
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

CYCLES = 3
IDLE = "25s"
CONCURRENT = 10


def history(body: dict[str, Any]) -> str:
    return json.dumps(body.get("messages", []), ensure_ascii=False)


def test_a_sleeping_session_wakes_when_its_user_talks_to_it(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    node_layout: node.NodeLayout,
    kubeconfig: Path,
    gateway: GatewayClient,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("keeper", spec("Hybrid", idleTimeout=IDLE, storage={"size": "1Gi"}))
    # The first pod waits for local-path to provision the volume (a helper pod), which on
    # a loaded 2-core CI host has taken longer than ready_pod's default 180 s.
    ready_pod(core, namespace, "keeper", timeout=420)
    said: list[str] = []
    pods: list[str] = []
    session_ids: set[str] = set()
    for cycle in range(1, CYCLES + 1):
        wakes_before = sessions.status("keeper").get("wakeCount") or 0
        if cycle == CYCLES:
            # Ten requests at once for the sleeping session (spread by the API server over
            # both gateway replicas): each is held until the new pod is ready, one wake.
            with ThreadPoolExecutor(CONCURRENT) as pool:
                answers = list(
                    pool.map(
                        lambda _: gateway.call("GET", namespace, "keeper", "/v1/status"),
                        range(CONCURRENT),
                    )
                )
            assert [status for status, _ in answers] == [200] * CONCURRENT, answers
        fake.reset()
        # The agent first reads what earlier pods wrote, then writes its own file.
        fake.add(
            bash(f"cat file-*.txt 2>/dev/null; echo content-{cycle} > file-{cycle}.txt"),
            text(f"wrote {cycle}"),
        )
        message = f"cycle {cycle}: write file {cycle}"
        sent_at = datetime.now(UTC).replace(microsecond=0)
        reply = gateway.send(namespace, "keeper", message)
        assert reply.status == 200, reply
        result = reply.events[-1]
        assert result["type"] == "result" and result["subtype"] == "success", reply.events[-3:]
        if cycle == 2:
            # Woken by this very request: the stream said so while it was held.
            assert ": waking" in reply.comments, reply.comments
            print(f"woken by a message: first event after {reply.first_event_after:.1f}s")
        if cycle > 1:
            assert (sessions.status("keeper").get("wakeCount") or 0) == wakes_before + 1
        pod = ready_pod(core, namespace, "keeper").metadata.name
        assert pod not in pods, "a new pod each time"
        pods.append(pod)
        # The pod's first request carried everything said in earlier pods, in order.
        bodies = fake.message_bodies()
        opening = history(bodies[0])
        positions = [opening.find(earlier) for earlier in said]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), opening[:2000]
        for earlier in range(1, cycle):
            assert f"wrote {earlier}" in opening
        # And the files of earlier pods were there for the agent's Bash to read.
        tool_output = history(bodies[1])
        for earlier in range(1, cycle):
            assert f"content-{earlier}" in tool_output, tool_output[-2000:]
        said.append(message)
        status = gateway.get(namespace, "keeper", "/v1/status")
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

    assert len(session_ids) == 1, session_ids
    # The files are on a real volume: a directory local-path-provisioner made on the node.
    status = sessions.status("keeper")
    claim = core.read_namespaced_persistent_volume_claim(status["pvcName"], namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    directory = Path(volume.spec.host_path.path)
    assert node_layout.volumes_dir in directory.parents
    listing = sorted(p.name for p in (directory / "workspace").iterdir())
    assert listing == [f"file-{n}.txt" for n in range(1, CYCLES + 1)], listing
    assert (directory / "workspace" / "file-2.txt").read_text().strip() == "content-2"
