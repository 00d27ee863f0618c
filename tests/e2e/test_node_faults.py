"""Faults on the real node (issue 16, scenario 6): the kubelet and containerd are SIGKILLed
and started again under running sessions, and a session's runner crash-loops.

Sessions of two patterns run through the faults: a LongRunning one and a Hybrid one on a
real PersistentVolume (local-path). A watch over the test counts every pod each session
ever had. After each restart every session must converge on its own: the same pod (a node
agent restart must not recreate pods), Ready, the Hybrid claim the same object, and the
session still answers a message through the gateway. The crash loop uses an image without
the runner's program (`spec.image`, the busybox image the node already has): the container
cannot start, the kubelet restarts it with its backoff, and the status says CrashLooping
with the restart count and the last exit, while the operator keeps the one pod.

Figures (seconds to converge, pods ever per session, claim uids, restart times) go to
docs/benchmarks/node-faults.json; docs/reliability.md reports them.
"""

from __future__ import annotations

import itertools
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

from corral.cluster import images, node
from corral.controller.lifecycle import parse_time
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for
from corral.testing.load import pod_is_ready

pytestmark = pytest.mark.e2e

SESSIONS = ("steady", "keeper")
# kube-controller-manager's --node-monitor-grace-period (its default since 1.32).
NODE_MONITOR_GRACE_SECONDS = 50


def converged(
    sessions: Sessions, core: client.CoreV1Api, pods: dict[str, str]
) -> dict[str, Any] | None:
    """Each session Running and Ready on the very pod it had before the fault."""
    states: dict[str, Any] = {}
    for name in SESSIONS:
        status = sessions.status(name)
        ready = condition(status, "Ready")
        live = session_pods(core, sessions.namespace, name)
        if status.get("phase") != "Running" or not ready or ready["status"] != "True":
            return None
        if [p.metadata.uid for p in live] != [pods[name]] or not pod_is_ready(live[0]):
            return None
        # No pod recreated (status.restarts counts pods made again after one was lost).
        assert (status.get("restarts") or 0) == 0, status
        states[name] = status
    return states


def survive(
    component: str,
    sessions: Sessions,
    core: client.CoreV1Api,
    node_layout: node.NodeLayout,
    gateway: GatewayClient,
    fake: FakeAnthropic,
    pods: dict[str, str],
    claim_uid: str,
    release: Release,
    down_seconds: float = 0.0,
) -> dict[str, Any]:
    restarts_before = {
        name: sum(
            s.restart_count
            for s in session_pods(core, sessions.namespace, name)[0].status.container_statuses
        )
        for name in SESSIONS
    }
    kill_time = datetime.now(UTC)
    killed = time.monotonic()
    killed_at = datetime.now(UTC).replace(microsecond=0)
    down = node.restart_component(node_layout, component, down_seconds=down_seconds)
    back = time.monotonic()
    wait_for(
        lambda: converged(sessions, core, pods),
        timeout=180,
        interval=0.5,
        what=f"every session converged after {component} restarted",
    )
    settled = time.monotonic()
    settled_at = datetime.now(UTC)
    # Still converged a while later (not a glimpse before the kubelet noticed anything).
    time.sleep(10)
    assert converged(sessions, core, pods) is not None, {n: sessions.status(n) for n in SESSIONS}
    claim = core.read_namespaced_persistent_volume_claim(
        sessions.status("keeper")["pvcName"], sessions.namespace
    )
    assert claim.metadata.uid == claim_uid and claim.status.phase == "Bound"
    ready_since = {
        name: parse_time(condition(sessions.status(name), "Ready")["lastTransitionTime"])  # type: ignore[index]
        for name in SESSIONS
    }
    if down_seconds > NODE_MONITOR_GRACE_SECONDS:
        # Down past the grace period the node controller marked the pods not ready: each
        # session said so and came back Ready on its own (the same pod, checked above).
        assert all(t is not None and t >= killed_at for t in ready_since.values()), ready_since
        # And said why, once: the pod was ready and is not (not "still starting").
        warned = {
            e.involved_object.name
            for e in core.list_namespaced_event(
                sessions.namespace, field_selector="reason=RunnerNotReady"
            ).items
            if e.type == "Warning"
        }
        assert warned >= set(SESSIONS), warned
    # And each session still does its work: a turn through the gateway (whose pods, on
    # the same node, were not ready either while the kubelet was away long).
    wait_for(
        lambda: all(
            pod_is_ready(p)
            for p in core.list_namespaced_pod(release.namespace).items
            if p.status.phase not in ("Succeeded", "Failed")
        ),
        timeout=180,
        interval=1,
        what="the operator's and the gateway's pods ready",
    )
    for name in SESSIONS:
        fake.reset()
        fake.add(text(f"{name} after {component}"))
        reply = gateway.send(sessions.namespace, name, f"still there after {component}?")
        assert reply.status == 200, reply
        assert reply.events[-1]["subtype"] == "success", reply.events[-3:]
    restarts_after = {
        name: sum(
            s.restart_count
            for s in session_pods(core, sessions.namespace, name)[0].status.container_statuses
        )
        for name in SESSIONS
    }
    return {
        "component": component,
        "seconds_down": down_seconds,
        # From the conditions (whole seconds): when the last session was Ready again, if
        # it had stopped being Ready after the kill; the polls above can catch the world
        # before the new kubelet resets its pods' readiness.
        "seconds_from_kill_to_ready_condition": max(
            ((t - killed_at).total_seconds() for t in ready_since.values() if t and t >= killed_at),
            default=None,
        ),
        "sessions_went_not_ready": all(
            t is not None and t >= killed_at for t in ready_since.values()
        ),
        "seconds_restart": round(down, 1),
        "seconds_to_converge_after_restart": round(settled - back, 1),
        "seconds_from_kill_to_converged": round(settled - killed, 1),
        "container_restarts": {n: restarts_after[n] - restarts_before[n] for n in SESSIONS},
        # The operator's API requests from the kill until converged, by verb.
        "operator_requests_during_recovery": operator_requests(
            node_layout.cluster, release, kill_time, settled_at
        ),
    }


def test_sessions_survive_kubelet_and_containerd_restarts(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    node_layout: node.NodeLayout,
    gateway: GatewayClient,
    ledger: PodLedger,
    kwok_load: BackgroundLoad,
) -> None:
    started = time.monotonic()
    load_before = kwok_load.pods()
    sessions = Sessions(custom, namespace)
    sessions.create("steady", spec("LongRunning"))
    sessions.create("keeper", spec("Hybrid", idleTimeout="1h", storage={"size": "1Gi"}))
    pods = {name: ready_pod(core, namespace, name, timeout=420).metadata.uid for name in SESSIONS}
    for name in SESSIONS:
        sessions.wait_phase(name, "Running")
    claim_name = sessions.status("keeper")["pvcName"]
    claim_uid = core.read_namespaced_persistent_volume_claim(claim_name, namespace).metadata.uid

    # The kubelet and containerd, each killed and started again at once; then the kubelet
    # down past the node controller's grace period: the node goes NotReady and its pods not
    # ready; when it is back the same pods must be Ready again.
    plan = [
        (node.KUBELET.name, 0.0),
        (node.CONTAINERD.name, 0.0),
        (node.KUBELET.name, NODE_MONITOR_GRACE_SECONDS + 10),
    ]
    faults = [
        survive(
            component,
            sessions,
            core,
            node_layout,
            gateway,
            fake,
            pods,
            claim_uid,
            operator,
            down_seconds=down,
        )
        for component, down in plan
    ]

    with ledger.lock:
        ever = {name: len(ledger.uids[name]) for name in SESSIONS}
        most = {name: ledger.most_live[name] for name in SESSIONS}
    assert ever == {name: 1 for name in SESSIONS}, ledger.uids
    assert most == {name: 1 for name in SESSIONS}
    load_figures = kwok_load.figures(load_before)
    record(
        "restarts",
        {
            **load_figures,
            "sessions": {"steady": "LongRunning", "keeper": "Hybrid, 1Gi local-path volume"},
            "faults": faults,
            "pods_ever": ever,
            "most_pods_at_once": most,
            "pvc_uid_before": claim_uid,
            "pvc_uid_after": core.read_namespaced_persistent_volume_claim(
                claim_name, namespace
            ).metadata.uid,
            "test_seconds": round(time.monotonic() - started, 1),
        },
    )


def test_a_crash_looping_runner_is_reported_and_left_to_the_kubelets_backoff(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    ledger: PodLedger,
    kwok_load: BackgroundLoad,
) -> None:
    started = time.monotonic()
    load_before = kwok_load.pods()
    sessions = Sessions(custom, namespace)
    # An image the node has but without the runner's program: every start fails.
    sessions.create("looping", spec("LongRunning", image=images.busybox_image().ref))
    status = sessions.wait_phase("looping", "CrashLooping", timeout=240)
    ready = condition(status, "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "CrashLooping"
    assert "the runner restarted" in ready["message"] and "last exit" in ready["message"]
    reported_at = time.monotonic() - started
    pods = session_pods(core, namespace, "looping")
    assert len(pods) == 1
    uid = pods[0].metadata.uid
    # Another kubelet restart (backoff 40 s by now) and the pod is still the same one.
    wait_for(
        lambda: (
            next(
                s.restart_count
                for p in session_pods(core, namespace, "looping")
                for s in p.status.container_statuses or []
            )
            >= 4
        ),
        timeout=180,
        interval=1,
        what="a fourth restart",
    )
    status = sessions.wait_phase("looping", "CrashLooping")
    message = condition(status, "Ready")["message"]  # type: ignore[index]
    assert [p.metadata.uid for p in session_pods(core, namespace, "looping")] == [uid]
    # The container restarts in place: no pod was recreated (status.restarts counts those).
    assert (status.get("restarts") or 0) == 0, status
    with ledger.lock:
        uids = set(ledger.uids["looping"])
        restarts = list(ledger.restarts["looping"])
    assert uids == {uid}, uids
    # The kubelet's backoff held: each restart waited longer than the one before.
    times = [at for at, count in restarts if count > 0]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 2 and gaps[-1] > gaps[0], restarts
    load_figures = kwok_load.figures(load_before)
    record(
        "crash_loop",
        {
            **load_figures,
            "image": "busybox (no runner program): the container cannot start",
            "seconds_to_CrashLooping": round(reported_at, 1),
            "ready_message": message,
            "restart_counts_seen": [count for _, count in restarts],
            "seconds_between_restarts": gaps,
            "pods_ever": len(uids),
            "test_seconds": round(time.monotonic() - started, 1),
        },
    )
