"""Issue 16, scenario 7: a Hybrid session slept and woken many times, one runner SIGKILLed.

One Hybrid session on a real volume (local-path) with the shortest idleTimeout that is
reliable here (the benchmark's 3 s; the CRD allows 1 s). The first pod sleeps at once; then
each cycle a message through the gateway wakes the session, the fake model makes the agent
read every earlier file and write its own (Bash), and the session goes back to sleep. After
each wake the checks are: the same SDK session, the model's first request carries every
earlier message and reply in order (the transcript on the volume), the agent's Bash saw
every earlier file (the workspace on the volume), and the claim is the same object (uid).

In one cycle the runner is killed with SIGKILL (`kill -9` of PID 1's child, the runner,
from an exec in its container) while the agent's Bash tool is mid-command: the kubelet
restarts the container, and the retried message must find the history up to the last
completed turn and every file.

A pod watch runs through the whole test: at no moment may the session have two live pods
(neither deleted nor finished). Figures (seconds to sleep after the turn, seconds from the
waking message to the reply's first event) go to $CORRAL_HYBRID_CYCLES_OUT (default
docs/benchmarks/hybrid-cycles.json). $CORRAL_HYBRID_CYCLES sets the number of cycles.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    SESSION_LABEL,
    GatewayClient,
    Reply,
    Sessions,
    condition,
    kubectl,
    ready_pod,
    session_pods,
    spec,
)
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from node_fault_support import BackgroundLoad

from corral.api import runtime
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

CYCLES = int(os.environ.get("CORRAL_HYBRID_CYCLES", "6"))
# The cycle whose turn is cut by SIGKILL (the middle one).
KILLED_CYCLE = max(2, CYCLES // 2)
IDLE = "3s"
OUT = Path(
    os.environ.get("CORRAL_HYBRID_CYCLES_OUT")
    or Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "hybrid-cycles.json"
)
# The doomed turn's Bash command (the CLI refuses a bare long `sleep`), found by its marker.
DOOMED = "python3 -c 'import time; time.sleep(90)' doomed-turn-marker"
# In the runner's container: wait until the doomed command runs (a child of the CLI, so the
# turn is mid-tool), list the processes, then SIGKILL PID 1's child (tini's: the runner).
# The marker is split so that this script's own command line does not contain it.
KILL_RUNNER = (
    "m=doomed-turn; m=$m-marker; "
    "for i in $(seq 100); do "
    '  for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); '
    '    [[ $c == python3*"$m"* ]] && found=${p#/proc/}; done; '
    "  [[ -n $found ]] && break; sleep 0.3; done; "
    '[[ -n $found ]] || { echo "no doomed command running"; exit 3; }; '
    'for p in /proc/[0-9]*; do echo "ps ${p#/proc/} $(tr "\\0" " " < $p/cmdline)"; done; '
    "pid=$(cat /proc/1/task/1/children); pid=${pid%% *}; "
    'echo "killing $pid: $(tr "\\0" " " < /proc/$pid/cmdline)"; kill -9 "$pid"'
)


def history(body: dict[str, Any]) -> str:
    return json.dumps(body.get("messages", []), ensure_ascii=False)


@dataclass
class PodWatch:
    """Every pod of one session seen over a whole test, from a watch: at each event, which
    pods are live (not deleted, not finished); the most ever live at once."""

    core: client.CoreV1Api
    namespace: str
    session: str
    live: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    max_live: int = 0
    overlaps: list[list[str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def observe(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        self.seen.add(name)
        finished = pod.status.phase in ("Succeeded", "Failed")
        if kind == "DELETED" or pod.metadata.deletion_timestamp or finished:
            self.live.pop(name, None)
        else:
            self.live[name] = pod.status.phase or ""
        if len(self.live) > 1:
            self.overlaps.append(sorted(self.live))
        self.max_live = max(self.max_live, len(self.live))

    def run(self) -> None:
        selector = f"{SESSION_LABEL}={self.session}"
        version = ""
        while not self.stop.is_set():
            try:
                if not version:
                    listed = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
                    self.live.clear()
                    for pod in listed.items:
                        self.observe("ADDED", pod)
                    version = listed.metadata.resource_version
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=5,
                )
                for event in stream:
                    self.observe(event["type"], event["object"])
                    version = event["object"].metadata.resource_version
            except ApiException as error:
                if error.status != 410:
                    self.errors.append(str(error))
                    time.sleep(1)
                version = ""  # expired: list again

    def __enter__(self) -> PodWatch:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def pvc_uid(core: client.CoreV1Api, namespace: str, name: str) -> str:
    claim = core.read_namespaced_persistent_volume_claim(name, namespace)
    assert claim.metadata.deletion_timestamp is None, claim.metadata
    assert claim.status.phase == "Bound", claim.status
    uid: str = claim.metadata.uid
    return uid


def asleep(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    """No pod of the session exists at all (not even a terminating one)."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{SESSION_LABEL}={name}")
    return not pods.items


def test_hybrid_sessions_survive_sleep_wake_cycles_and_a_sigkill_mid_turn(
    operator: Any,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    kubeconfig: Path,
    gateway: GatewayClient,
    kwok_load: BackgroundLoad,
) -> None:
    started = time.monotonic()
    load_before = kwok_load.pods()
    name = "cycler"
    sessions = Sessions(custom, namespace)
    results: dict[str, Any] = {
        "cycles": CYCLES,
        "idleTimeout": IDLE,
        "killed_cycle": KILLED_CYCLE,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samples": [],
    }
    with PodWatch(core, namespace, name) as pods_seen:
        sessions.create(name, spec("Hybrid", idleTimeout=IDLE, storage={"size": "1Gi"}))
        # The first pod waits for local-path to provision the volume (see test_hybrid).
        ready_pod(core, namespace, name, timeout=420)
        claim_name = sessions.status(name)["pvcName"]
        claim_uid = pvc_uid(core, namespace, claim_name)
        sessions.wait_phase(name, "Idle", timeout=120)
        wait_for(lambda: asleep(core, namespace, name), timeout=120, what="the first sleep")

        said: list[str] = []
        woken = 0
        session_ids: set[str] = set()
        for cycle in range(1, CYCLES + 1):
            sample: dict[str, Any] = {"cycle": cycle}
            wakes_before = sessions.status(name).get("wakeCount") or 0
            if cycle == KILLED_CYCLE:
                sample["sigkill"] = kill_mid_turn(
                    core, namespace, name, fake, kubeconfig, gateway, cycle
                )
                woken += sample["sigkill"]["woken"]
            fake.reset()
            # The agent first reads what earlier pods wrote, then writes its own file.
            fake.add(
                bash(f"cat file-*.txt 2>/dev/null; echo content-{cycle} > file-{cycle}.txt"),
                text(f"wrote {cycle}"),
            )
            message = f"cycle {cycle}: write file {cycle}"
            sent = time.monotonic()
            reply = gateway.send(namespace, name, message)
            turn_s = time.monotonic() - sent
            assert reply.status == 200, reply
            result = reply.events[-1]
            assert result["type"] == "result" and result["subtype"] == "success", reply.events[-3:]
            if cycle != KILLED_CYCLE:
                # Woken by this very message, once.
                assert ": waking" in reply.comments, reply.comments
                assert (sessions.status(name).get("wakeCount") or 0) == wakes_before + 1
            woken += ": waking" in reply.comments
            sample["woken"] = ": waking" in reply.comments
            sample["wake_to_first_event_s"] = round(reply.first_event_after or 0.0, 3)
            sample["turn_s"] = round(turn_s, 3)

            # History: the pod's first request carried everything said before, in order.
            bodies = fake.message_bodies()
            opening = history(bodies[0])
            positions = [opening.find(earlier) for earlier in said]
            assert all(p >= 0 for p in positions), (cycle, positions, opening[:3000])
            assert positions == sorted(positions), (cycle, positions)
            for earlier in range(1, cycle):
                assert f"wrote {earlier}" in opening, (cycle, earlier, opening[:3000])
            # Files: the agent's Bash read every earlier file from the volume.
            tool_output = history(bodies[1])
            for earlier in range(1, cycle):
                assert f"content-{earlier}" in tool_output, (cycle, tool_output[-2000:])
            said.append(message)
            session_ids.add(gateway.get(namespace, name, "/v1/status")["sessionId"])
            assert sessions.status(name)["pvcName"] == claim_name
            assert pvc_uid(core, namespace, claim_name) == claim_uid

            # Sleep: from the end of the turn until no pod of the session exists.
            done = time.monotonic()
            idle = sessions.wait_phase(name, "Idle", timeout=240)
            wait_for(lambda: asleep(core, namespace, name), timeout=120, what="the pod gone")
            sample["sleep_s"] = round(time.monotonic() - done, 3)
            assert condition(idle, "Idle")["status"] == "True", idle  # type: ignore[index]
            results["samples"].append(sample)
            print(f"cycle {cycle}: {sample}", flush=True)

        # The end: asleep, no pod, the conditions say so, the same claim and SDK session.
        status = sessions.status(name)
        assert status["phase"] == "Idle", status
        assert asleep(core, namespace, name)
        for type_, value in (("Idle", "True"), ("Ready", "False"), ("PodReady", "False")):
            found = condition(status, type_)
            assert found is not None and found["status"] == value, (type_, status)
        assert status.get("podName") is None, status
        assert pvc_uid(core, namespace, claim_name) == claim_uid
        assert len(session_ids) == 1, session_ids
        assert (status.get("wakeCount") or 0) >= CYCLES, status

    assert not pods_seen.errors, pods_seen.errors
    assert pods_seen.overlaps == [], pods_seen.overlaps
    assert pods_seen.max_live == 1, pods_seen.max_live
    # One pod per wake plus the first: the container restart after SIGKILL is no new pod.
    assert len(pods_seen.seen) == woken + 1, (woken, sorted(pods_seen.seen))

    samples = results["samples"]
    sleeps = [s["sleep_s"] for s in samples]
    wakes = [s["wake_to_first_event_s"] for s in samples if s["woken"]]
    results["totals"] = {
        **kwok_load.figures(load_before),
        "duplicates_seen": len(pods_seen.overlaps),
        "max_live_pods": pods_seen.max_live,
        "pods_made": len(pods_seen.seen),
        "pvcs_lost": 0,
        "files_or_history_lost": 0,
        "sleep_s": {"median": statistics.median(sleeps), "max": max(sleeps), "sum": sum(sleeps)},
        "wake_s": {"median": statistics.median(wakes), "max": max(wakes), "sum": sum(wakes)},
        "test_s": round(time.monotonic() - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["totals"]), flush=True)


def kill_mid_turn(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    fake: FakeAnthropic,
    kubeconfig: Path,
    gateway: GatewayClient,
    cycle: int,
) -> dict[str, Any]:
    """Wake the session with a turn whose Bash runs long, SIGKILL the runner mid-command,
    and wait until the restarted container is Ready (or the session slept again)."""
    fake.reset()
    fake.add(bash(f"{DOOMED}; echo never > killed-{cycle}.txt"), text("never"))
    with ThreadPoolExecutor(1) as pool:
        turn = pool.submit(gateway.send, namespace, name, f"cycle {cycle}: a turn cut short")
        wait_for(lambda: fake.message_bodies(), timeout=240, what="the doomed turn under way")
        pod = ready_pod(core, namespace, name, timeout=30)
        restarts_before = sum(c.restart_count for c in pod.status.container_statuses or [])
        killed_at = time.monotonic()
        done = kubectl(
            kubeconfig, "-n", namespace, "exec", pod.metadata.name,
            "-c", runtime.CONTAINER_NAME, "--", "bash", "-c", KILL_RUNNER,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "killing" in done.stdout and "corral runner" in done.stdout, done.stdout
        print(done.stdout, flush=True)
        reply: Reply = turn.result(timeout=240)
        ended_after = time.monotonic() - killed_at
    after = core.read_namespaced_pod(pod.metadata.name, namespace)
    statuses = [
        (c.name, c.restart_count, c.last_state.terminated and c.last_state.terminated.exit_code)
        for c in after.status.container_statuses or []
    ]
    print(f"stream ended {ended_after:.1f}s after the kill; containers {statuses}", flush=True)
    if reply.events and reply.events[-1].get("subtype") == "success":
        logs = kubectl(kubeconfig, "-n", namespace, "logs", pod.metadata.name, "--tail=60")
        print(logs.stdout[-6000:], flush=True)
    # The user's stream ended without a successful result.
    assert not (reply.events and reply.events[-1].get("subtype") == "success"), reply

    def recovered() -> bool:
        pods = session_pods(core, namespace, name)
        if not pods:
            return True  # slept already: the next message wakes it
        (current,) = pods
        statuses = current.status.container_statuses or []
        restarts = sum(c.restart_count for c in statuses)
        ready = all(c.ready for c in statuses) and bool(statuses)
        return current.metadata.name == pod.metadata.name and restarts > restarts_before and ready

    wait_for(recovered, timeout=240, interval=1, what="the runner restarted and Ready")
    return {
        "pod": pod.metadata.name,
        "killed": done.stdout.strip()[:200],
        "woken": ": waking" in reply.comments,
        "stream_events": len(reply.events),
        "recovered_s": round(time.monotonic() - killed_at, 3),
    }
