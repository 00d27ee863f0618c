"""Issue 19's benchmark on the real node: wake and create to the first event, runner start-up.

Skipped unless CORRAL_BENCH_WAKES=N. For each runner image (this tree's, and
$CORRAL_BENCH_BEFORE_IMAGE if set: an image built from an earlier tree, imported here) and
each CPU limit in $CORRAL_BENCH_CPUS (default "1,250m"), interleaved case by case:

- N wakes of one Hybrid session (idleTimeout 3s): a message through the gateway to the Idle
  session, from the request to the first event of the reply (the gateway holds the request
  while the operator wakes the session);
- $CORRAL_BENCH_CREATES (default 3) new LongRunning sessions: created, then at once a
  message through the gateway; from the create request to the first event;
- for each, from the pod's runner log: process start to its agent ready
  (`process_age_seconds`, this tree's runner only) and the pod's Ready transition.

Raw numbers: $CORRAL_BENCH_OUT (default docs/benchmarks/startup.json); the table:
`python -m bench.startup_report`.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    GatewayClient,
    Sessions,
    session_pods,
    spec,
)
from kubernetes import client

from corral.cluster import images, node
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

WAKES = int(os.environ.get("CORRAL_BENCH_WAKES", "0"))
CREATES = int(os.environ.get("CORRAL_BENCH_CREATES", "3"))
CPUS = os.environ.get("CORRAL_BENCH_CPUS", "1,250m").split(",")
BEFORE = os.environ.get("CORRAL_BENCH_BEFORE_IMAGE", "")  # ref=archive path
OUT = Path(
    os.environ.get("CORRAL_BENCH_OUT")
    or Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "startup.json"
)


def _time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def runner_timeline(
    core: client.CoreV1Api, namespace: str, pod: Any, since: float
) -> dict[str, Any]:
    """What the pod's status and its runner's log say about its start (`since`: when the
    request or the create was sent; the API's times have whole seconds)."""
    ready_at = next(
        (
            c.last_transition_time.timestamp()
            for c in pod.status.conditions or []
            if c.type == "Ready" and c.status == "True" and c.last_transition_time
        ),
        None,
    )
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace, container="runner")
    agent_ready: dict[str, Any] = {}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "agent ready":
            agent_ready = entry
            break
    runner_ready = _time(agent_ready.get("time"))
    running = next(
        (
            c.state.running.started_at.timestamp()
            for c in pod.status.container_statuses or []
            if c.name == "runner" and c.state and c.state.running
        ),
        None,
    )
    return {
        "pod_created_after_s": round(pod.metadata.creation_timestamp.timestamp() - since, 3),
        "container_started_after_s": round(running - since, 3) if running else None,
        "runner_ready_after_s": round(runner_ready - since, 3) if runner_ready else None,
        "process_to_ready_s": agent_ready.get("process_age_seconds"),
        # The Ready condition has whole seconds: a mean over many wakes says more than one.
        "runner_ready_to_pod_ready_s": (
            round(ready_at - runner_ready, 3) if ready_at and runner_ready else None
        ),
    }


def _settings(image: str, cpu: str, **fields: Any) -> dict[str, Any]:
    body = spec("Hybrid", **fields)
    body["resources"] = {**body["resources"], "cpu": cpu}
    body["image"] = image
    return body


@pytest.mark.skipif(WAKES < 1, reason="a benchmark: set CORRAL_BENCH_WAKES=N")
def test_benchmark_wake_and_create(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    gateway: GatewayClient,
    node_layout: node.NodeLayout,
) -> None:
    ours = "corral.dev/runner:0.1.0"
    cases = [("after", ours)]
    if BEFORE:
        ref, _, archive = BEFORE.partition("=")
        images.import_image(node_layout.containerd_socket, Path(archive), ref)
        cases.insert(0, ("before", ref))
    sessions = Sessions(custom, namespace)
    results: dict[str, Any] = {"wakes": WAKES, "creates": CREATES, "cases": []}
    n = 0
    for cpu in CPUS:
        for label, image in cases:
            n += 1
            name = f"wake{n}"
            sessions.create(
                name, _settings(image, cpu, idleTimeout="3s", storage={"size": "1Gi"})
            )
            case: dict[str, Any] = {"image": label, "cpu": cpu, "wake": [], "create": []}
            for sample in range(WAKES + 1):
                sessions.wait_phase(name, "Idle", timeout=180)
                wait_for(lambda: session_pods(core, namespace, name) == [], timeout=120)  # noqa: B023
                fake.reset()
                fake.add(text(f"awake {sample}"))
                started = time.time()
                reply = gateway.send(namespace, name, f"wake up {sample}")
                assert reply.status == 200 and reply.events[-1]["type"] == "result", reply
                (pod,) = session_pods(core, namespace, name)
                sample_result = {
                    "first_event_s": round(reply.first_event_after or 0, 3),
                    "result_s": round(time.time() - started, 3),
                    **runner_timeline(core, namespace, pod, started),
                }
                if sample == 0:
                    continue  # the first pod of the session: the image may be cold
                case["wake"].append(sample_result)
                print(f"{label} cpu={cpu} wake {sample}: {sample_result}", flush=True)
            custom.delete_namespaced_custom_object(
                "corral.dev", "v1alpha1", namespace, "agentsessions", name
            )
            for sample in range(CREATES):
                created = f"new{n}x{sample}"
                body = _settings(image, cpu)
                body["pattern"] = "LongRunning"
                fake.reset()
                fake.add(text(f"hello {sample}"))
                started = time.time()
                sessions.create(created, body)
                first_event_at = wait_for(
                    lambda: _send_when_known(gateway, namespace, created),  # noqa: B023
                    timeout=120,
                    interval=0.05,
                    what=f"a reply from {created}",
                )
                first = first_event_at - started
                (pod,) = session_pods(core, namespace, created)
                sample_result = {
                    "first_event_s": round(first, 3),
                    **runner_timeline(core, namespace, pod, started),
                }
                case["create"].append(sample_result)
                print(f"{label} cpu={cpu} create {sample}: {sample_result}", flush=True)
                custom.delete_namespaced_custom_object(
                    "corral.dev", "v1alpha1", namespace, "agentsessions", created
                )
            results["cases"].append(case)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")


def _send_when_known(gateway: GatewayClient, namespace: str, name: str) -> float | None:
    """Send once the gateway knows the session (its informer may lag the create by a few
    ms: a 404 then is no answer); returns when the first event came (epoch seconds)."""
    started = time.time()
    reply = gateway.send(namespace, name, "hello")
    if reply.status == 404:
        return None
    assert reply.status == 200 and reply.events[-1]["type"] == "result", reply
    assert reply.first_event_after is not None
    return started + reply.first_event_after
