"""SIGKILL the operator in the middle of a burst of work; a new one finishes it exactly.

200 sessions (LongRunning and Hybrid) are being created while 50 Hybrid sessions are being
scaled down (their idleTimeout is shortened to 1s, so every one of them is due at once).
The operator is killed without warning part-way through both; a replacement (a new
identity on the same Lease, as a restarted Deployment pod) takes over. Afterwards: one pod
for each awake session and never a second one, no pod for the idle ones, every volume
kept (same UIDs), and no session scaled down twice.

Runs its own operators on namespaces the run's shared operator does not watch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from lifecycle_support import (
    PodHistory,
    Sessions,
    Volumes,
    claim_uids,
    ensure_storage_class,
    own_prefix,
    pods_by_session,
    restricted_namespace,
    scaled_down_counts,
    small_resources,
)

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess, kwok_operator_config

pytestmark = pytest.mark.integration

STORAGE_CLASS = "corral-test-manual"
SLEEPERS = [f"sleep-{i:03d}" for i in range(50)]
LONG_RUNNING = [f"lr-{i:03d}" for i in range(100)]
HYBRID = [f"hy-{i:03d}" for i in range(100)]
BURST = [name for pair in zip(LONG_RUNNING, HYBRID, strict=True) for name in pair]
AWAKE = LONG_RUNNING + HYBRID
THREADS = 8


def spec(name: str) -> dict[str, Any]:
    if name.startswith("lr-"):
        return {"pattern": "LongRunning", "resources": small_resources()}
    return {
        "pattern": "Hybrid",
        "idleTimeout": "1h",
        "resources": small_resources(),
        "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS},
    }


def phase_of(session: dict[str, Any]) -> str | None:
    phase: str | None = (session.get("status") or {}).get("phase")
    return phase


@pytest.fixture
def fast_custom(kubeconfig: Path) -> client.CustomObjectsApi:
    """A client with a connection pool big enough for the creating threads."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = THREADS * 2
    return client.CustomObjectsApi(client.ApiClient(configuration))


@pytest.fixture
def world(
    chart_rbac: Any,
    crd: None,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    prefix = own_prefix()
    system = restricted_namespace(core, f"{prefix}system")
    namespace = restricted_namespace(core, f"{prefix}load")
    ensure_storage_class(api_client, STORAGE_CLASS)
    volumes = Volumes(core, label=f"{prefix}pv", storage_class=STORAGE_CLASS)
    volumes.bind(namespace, [f"{name}-state" for name in SLEEPERS + HYBRID], size="1Gi")
    operators: list[OperatorProcess] = []
    # The chart's rights, with watchNamespaces: a Role in the load namespace only.
    operator_kubeconfig = chart_rbac(system, f"{prefix}resilience", watch_namespaces=[namespace])

    def operator(identity: str) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=operator_kubeconfig,
            config=kwok_operator_config(system),
            workdir=tmp_path,
            namespaces=[namespace],
            lease_name=f"{prefix}resilience",
            identity=identity,
        )
        operators.append(process)
        return process.start()

    try:
        yield {"namespace": namespace, "operator": operator}
    finally:
        for process in operators:
            process.stop()
        for name in (namespace, system):
            core.delete_namespace(name, propagation_policy="Background")
        wait_for(
            lambda: not core.list_namespaced_pod(namespace).items,
            timeout=120,
            what="the load namespace's pods to go",
        )
        volumes.delete()


def test_sigkill_mid_burst_leaves_exactly_the_right_pods_and_every_volume(
    world: dict[str, Any], core: client.CoreV1Api, fast_custom: client.CustomObjectsApi
) -> None:
    namespace = world["namespace"]
    sessions = Sessions(fast_custom, namespace)
    first = world["operator"]("first")
    first.wait_leader()
    pool = ThreadPoolExecutor(THREADS)
    started = time.monotonic()

    with PodHistory(core, namespace) as history:
        # 50 Hybrid sessions, awake, with their volumes.
        list(pool.map(lambda n: sessions.create(n, spec(n)), SLEEPERS))

        def sleepers_running() -> bool:
            phases = {s["metadata"]["name"]: phase_of(s) for s in sessions.list()}
            return all(phases.get(name) == "Running" for name in SLEEPERS)

        wait_for(sleepers_running, timeout=120, what="the 50 Hybrid sessions to run")
        sleeper_claims = claim_uids(core, namespace)
        assert sorted(sleeper_claims) == sorted(f"{n}-state" for n in SLEEPERS)
        print(f"50 Hybrid sessions running after {time.monotonic() - started:.1f}s")

        # The burst: 200 creations, and among them the 50 become due for scale-down (their
        # idleTimeout shortened to 1s), one every four creations.
        burst_started = time.monotonic()
        creations: list[Any] = []
        shorten: list[Any] = []
        for index, name in enumerate(BURST):
            creations.append(pool.submit(sessions.create, name, spec(name)))
            if index % 4 == 3:
                sleeper = SLEEPERS[index // 4]
                patch = {"spec": {"idleTimeout": "1s"}}
                shorten.append(pool.submit(sessions.patch, sleeper, patch))

        def idle_sleepers() -> int:
            return sum(
                phase_of(s) == "Idle" for s in sessions.list() if s["metadata"]["name"] in SLEEPERS
            )

        def awake_with_pod() -> int:
            pods = pods_by_session(core, namespace)
            return sum(1 for name in AWAKE if pods.get(name))

        def part_way() -> bool:
            # Scale-downs are quicker than creations: on a loaded machine all 50 could be
            # done before 60 pods exist, so ten of them are enough to stop at.
            idle = idle_sleepers()
            return idle >= 1 and (idle >= 10 or awake_with_pod() >= 60)

        wait_for(
            part_way,
            timeout=120,
            interval=0.1,
            what="the operator part-way through the burst",
        )
        first.kill()
        killed = time.monotonic()
        pods_at_kill = pods_by_session(core, namespace)
        idle_at_kill = idle_sleepers()
        awake_pods_at_kill = sum(1 for n in AWAKE if pods_at_kill.get(n))
        created_at_kill = sum(f.done() for f in creations)
        print(
            f"SIGKILL {killed - burst_started:.1f}s into the burst: {created_at_kill}/200 "
            f"sessions created, {awake_pods_at_kill}/200 with a pod, "
            f"{idle_at_kill}/50 scaled down"
        )
        assert awake_pods_at_kill < 200, "the kill came after every creation"
        assert idle_at_kill < 50, "the kill came after every scale-down"

        for future in creations + shorten:
            future.result()
        claims_at_kill = claim_uids(core, namespace)

        second = world["operator"]("second")
        second.wait_leader(timeout=60)
        print(f"replacement leads {time.monotonic() - killed:.1f}s after the kill")

        def converged() -> bool:
            pods = pods_by_session(core, namespace)
            phases = {s["metadata"]["name"]: phase_of(s) for s in sessions.list()}
            awake = all(phases.get(n) == "Running" and len(pods.get(n, [])) == 1 for n in AWAKE)
            asleep = all(phases.get(n) == "Idle" and not pods.get(n) for n in SLEEPERS)
            return awake and asleep

        wait_for(converged, timeout=180, interval=1.0, what="every session settled")
        print(f"settled {time.monotonic() - killed:.1f}s after the kill")
        time.sleep(3)  # and nothing more happens
        pods = pods_by_session(core, namespace)

    # Exactly one pod per awake session, and never a second one.
    for name in AWAKE:
        assert len(pods.get(name, [])) == 1, name
        assert history.pods_ever(name) == 1, f"{name}: {history.created[name]}"
    # No pod for the idle ones: each had its one pod, now gone.
    for name in SLEEPERS:
        assert pods.get(name, []) == [], name
        assert history.pods_ever(name) == 1, name
    assert set(pods) == set(AWAKE)
    assert max(history.most_at_once.values()) == 1
    # Every volume kept: the same objects as before the kill, one per Hybrid session.
    claims = claim_uids(core, namespace)
    assert sorted(claims) == sorted(f"{n}-state" for n in SLEEPERS + HYBRID)
    for name, uid in {**claims_at_kill, **sleeper_claims}.items():
        assert claims[name] == uid, f"{name} was replaced"
    # No session was scaled down twice.
    counts = scaled_down_counts(core, namespace)
    assert set(counts) <= set(SLEEPERS)
    assert max(counts.values()) <= 1, counts
    statuses = {s["metadata"]["name"]: s["status"] for s in sessions.list()}
    for name in SLEEPERS:
        assert "idleSince" in statuses[name]
        assert statuses[name]["pvcName"] == f"{name}-state"
    print(f"whole test {time.monotonic() - started:.1f}s")
