"""The real node lost entirely, then back (issue 16, scenario 6): sessions come back on
their own, the Hybrid one with its volume.

A LongRunning session and a Hybrid one on a real volume (local-path, a directory of the
node) run on the suite's real node, with the chart's operator and gateway as pods there
too. Each answers a turn first; the Hybrid one's agent writes a file to its workspace.
Then the node is lost: `corral.cluster.node.down` stops every process of it (kubelet,
containerd, every container, the network) and deletes its Node object, as a cloud's node
lifecycle controller does when a VM disappears. Nothing runs any more, the operator
included: the API server's pod garbage collector deletes the pods bound to the missing
node. Then a node comes back under the same name with its disk kept (the volumes and the
image store; the kubelet's own state wiped), as a VM replaced with its data disk attached
again: `node.up`.

What must hold, with generous deadlines: the operator and the gateway come back by
themselves (their Deployments); each session is Running and Ready on exactly one new pod;
the LongRunning session counted the lost pod (`status.restarts`, a PodLost event); the
Hybrid claim is the same object (uid), Bound, never deleted; each session answers a turn
through the gateway, the Hybrid agent finds its file and the model's first request carries
the conversation before the loss (the same SDK session, resumed from the volume). A pod
watch over the whole test: never two live pods of one session. Figures (seconds until the
pods were collected, until the node was back, until converged; the operator's API requests
since its new pods started) go to docs/benchmarks/node-faults.json.

The test brings the node back even when an assertion fails on the way, so that the tests
after it find it (and the fake model API, served in the node's "outside" namespace, which
goes with the node, is started again there).
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from e2e_support import (
    FAKE_API_PORT,
    GatewayClient,
    Release,
    Sessions,
    condition,
    ready_pod,
    session_pods,
    spec,
)
from kubernetes import client
from kubernetes.client.rest import ApiException
from node_fault_support import BackgroundLoad, PodLedger, operator_requests, record

from corral.cluster import node
from corral.cluster.layout import REAL_NODE_NAME, Layout
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for
from corral.testing.load import pod_is_ready
from corral.testing.outside import start_fake_anthropic

pytestmark = pytest.mark.e2e

SESSIONS = {"steady": "LongRunning", "keeper": "Hybrid"}
KEPT = "kept-before-the-node-was-lost"
BEFORE = "write the file before the node goes"


def node_exists(core: client.CoreV1Api) -> bool:
    try:
        core.read_node(REAL_NODE_NAME)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def pods_on_lost_node(core: client.CoreV1Api, namespaces: tuple[str, ...]) -> list[str]:
    return [
        f"{pod.metadata.namespace}/{pod.metadata.name}"
        for ns in namespaces
        for pod in core.list_namespaced_pod(ns).items
        if pod.spec.node_name == REAL_NODE_NAME
    ]


def converged(
    sessions: Sessions, core: client.CoreV1Api, old_pods: dict[str, str]
) -> dict[str, Any] | None:
    """Each session Running and Ready on one live, Ready pod that is not the lost one."""
    states: dict[str, Any] = {}
    for name in SESSIONS:
        status = sessions.status(name)
        ready = condition(status, "Ready")
        live = session_pods(core, sessions.namespace, name)
        if status.get("phase") != "Running" or not ready or ready["status"] != "True":
            return None
        if len(live) != 1 or live[0].metadata.uid == old_pods[name] or not pod_is_ready(live[0]):
            return None
        if status.get("podName") != live[0].metadata.name:
            return None
        states[name] = status
    return states


def release_ready(release: Release, core: client.CoreV1Api) -> bool:
    pods = [
        p
        for p in core.list_namespaced_pod(release.namespace).items
        if not p.metadata.deletion_timestamp and p.status.phase not in ("Succeeded", "Failed")
    ]
    return bool(pods) and all(pod_is_ready(p) for p in pods)


def bring_back(layout: Layout, fake_api: FakeAnthropic) -> float:
    """The node up again (same name, disk kept, the kubelet's state wiped) and the fake
    model API served again in its new outside namespace; returns the seconds `up` took."""
    where = node.NodeLayout(layout)
    shutil.rmtree(where.kubelet_dir, ignore_errors=True)
    started = time.monotonic()
    node.up(layout)
    took = time.monotonic() - started
    fake_api.stop_thread()
    start_fake_anthropic(fake_api, where.outside_netns, node.OUTSIDE_IP, FAKE_API_PORT)
    return took


# The node's loss and return take several minutes on top of the suite's start (when this
# test is the first to run).
@pytest.mark.timeout(1500)
def test_the_node_lost_and_back(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake_api: FakeAnthropic,
    fake: FakeAnthropic,
    real_node_cluster: Layout,
    gateway: GatewayClient,
    ledger: PodLedger,
    kwok_load: BackgroundLoad,
) -> None:
    started = time.monotonic()
    load_before = kwok_load.pods()
    sessions = Sessions(custom, namespace)
    sessions.create("steady", spec("LongRunning"))
    sessions.create("keeper", spec("Hybrid", idleTimeout="1h", storage={"size": "1Gi"}))
    old_pods = {n: ready_pod(core, namespace, n, timeout=420).metadata.uid for n in SESSIONS}
    for name in SESSIONS:
        sessions.wait_phase(name, "Running")
    claim_name = sessions.status("keeper")["pvcName"]
    claim = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
    claim_uid, volume = claim.metadata.uid, claim.spec.volume_name

    # Before: a turn each; the Hybrid agent writes a file to its workspace (the volume).
    fake.add(text("steady before"))
    reply = gateway.send(namespace, "steady", "hello before the node goes")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    fake.reset()
    fake.add(bash(f"echo {KEPT} > kept.txt && cat kept.txt"), text("wrote kept.txt"))
    reply = gateway.send(namespace, "keeper", BEFORE)
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    assert KEPT in json.dumps(fake.message_bodies()[-1]["messages"]), "the tool did not run"
    session_id = gateway.get(namespace, "keeper", "/v1/status")["sessionId"]
    operator_pods = {p.metadata.name for p in operator.pods()}

    # The node lost: every process gone, the Node object deleted.
    lost_time = datetime.now(UTC)
    lost_at = lost_time.replace(microsecond=0)
    lost = time.monotonic()
    left = node.down(real_node_cluster)
    down_s = time.monotonic() - lost
    figures: dict[str, Any] = {"seconds_node_down_took": round(down_s, 1)}
    up_s: float | None = None
    try:
        assert left == [], left
        assert not node_exists(core)
        # The API server's pod garbage collector deletes the pods bound to the missing
        # node (after its quarantine); the Deployments' replacements wait unscheduled.
        watched = (namespace, operator.namespace)
        wait_for(
            lambda: not pods_on_lost_node(core, watched),
            timeout=300,
            interval=2,
            what="the lost node's pods garbage-collected",
        )
        figures["seconds_until_pods_collected"] = round(time.monotonic() - lost, 1)
        # Meanwhile the claim and its volume stay, bound to each other.
        during = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
        assert during.metadata.uid == claim_uid and during.status.phase == "Bound", during
        pv = core.read_persistent_volume(volume)
        terms = pv.spec.node_affinity.required.node_selector_terms
        figures["volume_node"] = [v for t in terms for e in t.match_expressions for v in e.values]
        assert figures["volume_node"] == [REAL_NODE_NAME], figures
        # With the operator gone too, nothing writes the sessions' status: what it says
        # now is what it said before the loss.
        figures["status_while_no_node"] = {
            name: {
                "phase": sessions.status(name).get("phase"),
                "ready": (condition(sessions.status(name), "Ready") or {}).get("reason"),
            }
            for name in SESSIONS
        }
        figures["seconds_without_a_node"] = round(time.monotonic() - lost, 1)
    finally:
        up_s = bring_back(real_node_cluster, fake_api)
    back = time.monotonic()
    figures["seconds_node_up_took"] = round(up_s, 1)

    # The operator and the gateway back by themselves, a leader elected.
    wait_for(
        lambda: release_ready(operator, core),
        timeout=420,
        interval=2,
        what="the operator's and the gateway's pods ready again",
    )
    leader = operator.wait_leader(timeout=300)
    assert leader not in operator_pods, (leader, operator_pods)
    figures["seconds_until_operator_leads"] = round(time.monotonic() - back, 1)
    # Each session on one new Ready pod.
    states = wait_for(
        lambda: converged(sessions, core, old_pods),
        timeout=420,
        interval=1,
        what="every session Running on a new pod",
    )
    figures["seconds_until_converged_after_node_back"] = round(time.monotonic() - back, 1)
    # The operator's requests from the loss until converged (its new pods' start-up lists
    # and watches included: its whole recovery).
    figures["operator_requests_until_converged"] = operator_requests(
        real_node_cluster, operator, lost_time, datetime.now(UTC)
    )
    time.sleep(10)  # still so a while later
    assert converged(sessions, core, old_pods) is not None, {
        n: sessions.status(n) for n in SESSIONS
    }
    for name in SESSIONS:
        assert (states[name].get("restarts") or 0) >= 1, (name, states[name])
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},reason=PodLost"
        ).items
        assert events, f"no PodLost event for {name}"
    ready_at = {
        name: condition(sessions.status(name), "Ready")["lastTransitionTime"]  # type: ignore[index]
        for name in SESSIONS
    }
    assert all(datetime.fromisoformat(t) > lost_at for t in ready_at.values()), ready_at

    # The Hybrid claim: the same object, Bound, on the same volume.
    after = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
    assert after.metadata.uid == claim_uid and after.status.phase == "Bound", after
    assert after.spec.volume_name == volume
    assert sessions.status("keeper")["pvcName"] == claim_name

    # Each session answers through the gateway; the Hybrid one finds its file and its
    # conversation (the same SDK session, resumed from the transcript on the volume).
    fake.reset()
    fake.add(text("steady after"))
    reply = gateway.send(namespace, "steady", "still there after the node came back?")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    fake.reset()
    fake.add(bash("cat kept.txt"), text("read kept.txt"))
    reply = gateway.send(namespace, "keeper", "read the file after the node came back")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    bodies = fake.message_bodies()
    opening = json.dumps(bodies[0]["messages"])
    assert BEFORE in opening and "wrote kept.txt" in opening, opening[:3000]
    tool_output = json.dumps(bodies[1]["messages"])
    assert tool_output.count(KEPT) > opening.count(KEPT), tool_output[-2000:]
    assert gateway.get(namespace, "keeper", "/v1/status")["sessionId"] == session_id

    # Never two live pods of one session; one lost pod and one new one each.
    with ledger.lock:
        ever = {name: len(ledger.uids[name]) for name in SESSIONS}
        most = {name: ledger.most_live[name] for name in SESSIONS}
    assert most == {name: 1 for name in SESSIONS}, ledger.uids
    assert ever == {name: 2 for name in SESSIONS}, ledger.uids
    load_figures = kwok_load.figures(load_before)
    record(
        "node_lost",
        {
            **load_figures,
            "sessions": {"steady": "LongRunning", "keeper": "Hybrid, 1Gi local-path volume"},
            "node_back_as": "the same name, its disk kept (volumes, images), the kubelet's "
            "state wiped",
            **figures,
            "restarts": {n: states[n].get("restarts") for n in SESSIONS},
            "pods_ever": ever,
            "most_pods_at_once": most,
            "pvc_uid_before": claim_uid,
            "pvc_uid_after": after.metadata.uid,
            "pvcs_lost": 0,
            "files_or_history_lost": 0,
            "test_seconds": round(time.monotonic() - started, 1),
        },
    )
