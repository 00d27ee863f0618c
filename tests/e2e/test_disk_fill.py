"""The disk filled to eviction under a LongRunning and a Hybrid session (issue 16, scenario
6): the kubelet evicts each pod, the operator brings each session back on a new pod, the
Hybrid one with its volume and the files on it.

Each session's agent runs a Bash command that writes past a limit `resources.disk` sets
(1Gi here; render/pod.py): the LongRunning one 1.2 GiB into its workspace (an emptyDir of
sizeLimit 1Gi, also the pod's ephemeral-storage limit); the Hybrid one 300 MiB into /tmp
(an emptyDir of a quarter of the disk), because its workspace is the PersistentVolume,
which local-path does not cap and which is no ephemeral storage. The command then waits,
so that only the eviction ends the turn. The kubelet's eviction manager measures the
volumes and evicts the pods (phase Failed, reason Evicted).

What must hold: each session Running and Ready again on one new pod, `status.restarts`
counting the lost one, the kubelet's Evicted event on the old pod and the session's PodLost
event naming that pod and how it ended (see below); the Hybrid claim the same
object (uid), Bound; its file on the volume intact and its conversation resumed (the
same SDK session); each session answers a turn through the gateway; never two live pods
of a session. Node-wide disk pressure (the node's own filesystem filling) is not made
here: the node's filesystem is the shared machine's disk.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from e2e_support import (
    GatewayClient,
    Release,
    Sessions,
    condition,
    ready_pod,
    session_pods,
    spec,
)
from kubernetes import client
from node_fault_support import BackgroundLoad, PodLedger, operator_requests, record

from corral.cluster.layout import Layout
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for
from corral.testing.load import pod_is_ready

pytestmark = pytest.mark.e2e

KEPT = "kept-on-the-volume"
# Each session's filling command, with a marker its request (and only its) carries; the
# Bash tool's own timeout raised past the wait (the eviction manager can lag on a busy node).
FILLS = {
    "steady": ("steady-fill", "dd if=/dev/zero of=big bs=1M count=1200 status=none"),
    "keeper": ("keeper-fill", "dd if=/dev/zero of=/tmp/big bs=1M count=300 status=none"),
}


def send_in_background(gateway: GatewayClient, namespace: str, name: str, text_: str) -> None:
    """A turn that never ends by itself (the pod is evicted under it): nobody waits for it."""

    def run() -> None:
        try:
            gateway.send(namespace, name, text_, timeout=400)
        except Exception as error:  # the connection dies with the pod
            print(f"{name}'s filling turn ended: {error!r}", flush=True)

    threading.Thread(target=run, name=f"fill-{name}", daemon=True).start()


def back_on_a_new_pod(
    sessions: Sessions, core: client.CoreV1Api, name: str, old_uid: str
) -> dict[str, Any] | None:
    status = sessions.status(name)
    ready = condition(status, "Ready")
    live = session_pods(core, sessions.namespace, name)
    if status.get("phase") != "Running" or not ready or ready["status"] != "True":
        return None
    if len(live) != 1 or live[0].metadata.uid == old_uid or not pod_is_ready(live[0]):
        return None
    return status if (status.get("restarts") or 0) >= 1 else None


# The eviction manager can lag minutes on a busy node; the suite's start may come first.
@pytest.mark.timeout(1500)
def test_sessions_evicted_for_disk_come_back(
    operator: Release,
    real_node_cluster: Layout,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    gateway: GatewayClient,
    ledger: PodLedger,
    kwok_load: BackgroundLoad,
) -> None:
    started = time.monotonic()
    load_before = kwok_load.pods()
    sessions = Sessions(custom, namespace)
    sessions.create("steady", spec("LongRunning"))
    sessions.create("keeper", spec("Hybrid", idleTimeout="1h", storage={"size": "1Gi"}))
    first = {n: ready_pod(core, namespace, n, timeout=420) for n in FILLS}
    old = {n: pod.metadata.uid for n, pod in first.items()}
    old_names = {n: pod.metadata.name for n, pod in first.items()}
    for name in FILLS:
        sessions.wait_phase(name, "Running")
    claim_name = sessions.status("keeper")["pvcName"]
    claim_uid = core.read_namespaced_persistent_volume_claim(claim_name, namespace).metadata.uid
    fake.add(bash(f"echo {KEPT} > kept.txt"), text("wrote kept.txt"))
    reply = gateway.send(namespace, "keeper", "write the file first")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    session_id = gateway.get(namespace, "keeper", "/v1/status")["sessionId"]

    # Both fill their disk at once; only the eviction ends the turn.
    fake.reset()
    for marker, command in FILLS.values():
        step = bash(f"{command}; du -sh .; sleep 290", match=marker)
        step.input["timeout"] = 300_000
        fake.add(step)
    fill_time = datetime.now(UTC)
    filled = time.monotonic()
    for name, (marker, _) in FILLS.items():
        send_in_background(gateway, namespace, name, f"{marker}: fill the disk")

    seconds: dict[str, float] = {}
    states: dict[str, Any] = {}
    for name in FILLS:
        states[name] = wait_for(
            lambda name=name: back_on_a_new_pod(sessions, core, name, old[name]),
            timeout=480,
            interval=1,
            what=f"{name} evicted and back on a new pod",
        )
        seconds[name] = round(time.monotonic() - filled, 1)
    requests = operator_requests(real_node_cluster, operator, fill_time, datetime.now(UTC))
    assert len(fake.message_bodies()) >= 2, "the filling turns never reached the model"

    # The kubelet's Event on the old pod says it evicted it; the session's PodLost Event
    # names that pod and why it ended as far as the pod says: `Evicted`, or, when the
    # runner exited 0 on the kubelet's SIGTERM, a pod `Succeeded` with no reason at all
    # (the kubelet's doing, kubernetes/kubernetes#141483), which the operator says is no
    # clean end. The status counted the lost pod.
    evictions: dict[str, dict[str, Any]] = {}
    for name in FILLS:
        evicted = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={old_names[name]},reason=Evicted"
        ).items
        assert evicted, f"no Evicted event for {name}'s pod {old_names[name]}"
        lost = [
            e.message
            for e in core.list_namespaced_event(
                namespace, field_selector=f"involvedObject.name={name},reason=PodLost"
            ).items
        ]
        assert any(
            m.startswith(f"pod {old_names[name]} ended (Evicted")
            or m.startswith(f"pod {old_names[name]} ended (Succeeded, unasked: the kubelet")
            for m in lost
        ), (name, lost)
        assert states[name]["restarts"] == 1, states[name]
        with ledger.lock:
            phase, reason = ledger.ends.get(old[name], ("?", None))
        evictions[name] = {
            "kubelet_event": evicted[0].message,
            "pod_ended_as": {"phase": phase, "reason": reason},
            "session_event": lost[0],
        }

    # The Hybrid claim kept, its file and conversation there; both answer.
    claim = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
    assert claim.metadata.uid == claim_uid and claim.status.phase == "Bound", claim
    fake.reset()
    fake.add(bash("cat kept.txt; ls -la /tmp"), text("read kept.txt"))
    reply = gateway.send(namespace, "keeper", "read the file after the eviction")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    bodies = fake.message_bodies()
    opening = json.dumps(bodies[0]["messages"])
    assert "write the file first" in opening and "wrote kept.txt" in opening, opening[:3000]
    tool_output = json.dumps(bodies[1]["messages"])
    assert KEPT in tool_output.rsplit("read the file after the eviction", 1)[-1], tool_output
    assert gateway.get(namespace, "keeper", "/v1/status")["sessionId"] == session_id
    fake.reset()
    fake.add(text("steady after"))
    reply = gateway.send(namespace, "steady", "still there after the eviction?")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply

    with ledger.lock:
        ever = {name: len(ledger.uids[name]) for name in FILLS}
        most = {name: ledger.most_live[name] for name in FILLS}
    assert most == {name: 1 for name in FILLS}, ledger.uids
    assert ever == {name: 2 for name in FILLS}, ledger.uids
    load_figures = kwok_load.figures(load_before)
    record(
        "disk_filled",
        {
            **load_figures,
            "sessions": {
                "steady": "LongRunning: 1.2 GiB into the workspace (emptyDir, 1Gi)",
                "keeper": "Hybrid: 300 MiB into /tmp (emptyDir, 256Mi); workspace on a 1Gi "
                "local-path volume",
            },
            "seconds_from_fill_to_back_on_a_new_pod": seconds,
            "evictions": evictions,
            "restarts": {n: states[n]["restarts"] for n in FILLS},
            # From the fill's start until both were back.
            "operator_requests_during_recovery": requests,
            "pods_ever": ever,
            "most_pods_at_once": most,
            "pvc_uid_before": claim_uid,
            "pvc_uid_after": claim.metadata.uid,
            "test_seconds": round(time.monotonic() - started, 1),
        },
    )
