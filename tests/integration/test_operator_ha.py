"""Two operator replicas on one Lease: only the leader acts, and a standby takes over.

- Both replicas watch the same namespaces; over a mix of LongRunning and Hybrid sessions
  (each Hybrid one idles out once, is woken, idles again) no pod is ever created twice and
  no session is scaled down twice (every pod seen through a watch, ScaledDown Events
  counted), and the standby reconciles nothing.
- SIGKILL the leader: the standby waits out the Lease (it must not act earlier) and then
  reconciles a session created right after the kill. The takeover time is measured for
  the harness's Lease settings and the chart's defaults, and written to
  docs/measurements/ha-takeover.md when CORRAL_RECORD_MEASUREMENTS=1.

Runs its own operators on namespaces the run's shared operator does not watch.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from lifecycle_support import (
    PodHistory,
    Sessions,
    Volumes,
    ensure_storage_class,
    own_prefix,
    pods_by_session,
    restricted_namespace,
    scaled_down_counts,
    small_resources,
)

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess, kwok_operator_config
from measurement_docs import record

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MEASUREMENTS = REPO / "docs" / "measurements" / "ha-takeover.md"
STORAGE_CLASS = "corral-test-manual"
LONG_RUNNING = [f"lr-{i:02d}" for i in range(15)]
HYBRID = [f"hy-{i:02d}" for i in range(15)]

Replica = Callable[..., OperatorProcess]


@pytest.fixture
def cluster_side(
    kubeconfig: Path, crd: None, api_client: client.ApiClient, core: client.CoreV1Api
) -> Iterator[dict[str, Any]]:
    prefix = own_prefix()
    system = restricted_namespace(core, f"{prefix}system")
    namespace = restricted_namespace(core, f"{prefix}ha")
    ensure_storage_class(api_client, STORAGE_CLASS)
    volumes = Volumes(core, label=f"{prefix}pv", storage_class=STORAGE_CLASS)
    try:
        yield {"prefix": prefix, "system": system, "namespace": namespace, "volumes": volumes}
    finally:
        for name in (namespace, system):
            core.delete_namespace(name, propagation_policy="Background")
        wait_for(
            lambda: not core.list_namespaced_pod(namespace).items,
            timeout=120,
            what="the test namespace's pods to go",
        )
        volumes.delete()


@pytest.fixture
def replica(cluster_side: dict[str, Any], chart_rbac: Any, tmp_path: Path) -> Iterator[Replica]:
    """Start replicas of one operator: same Lease, same namespace pattern, own identity,
    each with exactly the Helm chart's rights."""
    started: list[OperatorProcess] = []
    lease_name = f"{cluster_side['prefix']}ha"
    kubeconfig = chart_rbac(cluster_side["system"], lease_name)

    def start(
        identity: str, lease_seconds: float = 4.0, renew_seconds: float = 1.0
    ) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=kubeconfig,
            config=kwok_operator_config(cluster_side["system"]),
            workdir=tmp_path,
            namespaces=[f"{cluster_side['prefix']}*"],
            lease_name=lease_name,
            identity=identity,
            lease_seconds=lease_seconds,
            renew_seconds=renew_seconds,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def reconciles(process: OperatorProcess) -> float:
    return process.metric("corral_reconcile_duration_seconds_count")


def the_leader(replicas: list[OperatorProcess]) -> OperatorProcess:
    def one() -> OperatorProcess | None:
        leaders = [r for r in replicas if r.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    return wait_for(one, timeout=60, what="exactly one leader")


def hybrid_spec() -> dict[str, Any]:
    return {
        "pattern": "Hybrid",
        "idleTimeout": "3s",
        "resources": small_resources(),
        "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS},
    }


def phases(sessions: Sessions) -> dict[str, str | None]:
    return {s["metadata"]["name"]: (s.get("status") or {}).get("phase") for s in sessions.list()}


def test_two_replicas_never_create_a_pod_twice_nor_scale_down_twice(
    cluster_side: dict[str, Any],
    replica: Replica,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    namespace = cluster_side["namespace"]
    cluster_side["volumes"].bind(namespace, [f"{n}-state" for n in HYBRID], size="1Gi")
    sessions = Sessions(custom, namespace)
    a = replica("replica-a")
    a.wait_leader()
    b = replica("replica-b")
    time.sleep(3)
    assert a.is_leader() and not b.is_leader()

    with PodHistory(core, namespace) as history:
        for name in LONG_RUNNING:
            sessions.create(name, {"pattern": "LongRunning", "resources": small_resources()})
        for name in HYBRID:
            sessions.create(name, hybrid_spec())

        def settled(idle_phase: str = "Idle") -> bool:
            now = phases(sessions)
            pods = pods_by_session(core, namespace)
            awake = all(now.get(n) == "Running" and len(pods.get(n, [])) == 1 for n in LONG_RUNNING)
            asleep = all(now.get(n) == idle_phase and not pods.get(n) for n in HYBRID)
            return awake and asleep

        wait_for(settled, timeout=120, interval=0.5, what="sessions running or idle")
        # Wake every Hybrid session once; each idles out again.
        for name in HYBRID:
            sessions.wake(name, "once")
        wait_for(
            lambda: all((sessions.status(n).get("wakeCount") or 0) == 1 for n in HYBRID),
            timeout=60,
            what="every Hybrid session woken",
        )
        wait_for(settled, timeout=120, interval=0.5, what="sessions idle again")
        time.sleep(3)

    assert reconciles(b) == 0, "the standby reconciled"
    assert b.metric("corral_scale_downs_total") == 0
    assert a.metric("corral_scale_downs_total") == 2 * len(HYBRID)
    for name in LONG_RUNNING:
        assert history.pods_ever(name) == 1, f"{name}: {history.created[name]}"
    for name in HYBRID:
        assert history.pods_ever(name) == 2, f"{name}: {history.created[name]}"
    assert max(history.most_at_once.values()) == 1
    counts = scaled_down_counts(core, namespace)
    assert {counts[name] for name in HYBRID} == {2}, counts

    # The leader dies; the standby takes over and does not redo anything.
    with PodHistory(core, namespace) as after:
        a.kill()
        b.wait_leader(timeout=60)
        sessions.create("after-kill", {"pattern": "LongRunning", "resources": small_resources()})
        sessions.wait_phase("after-kill", "Running", timeout=60)
        for name in HYBRID[:5]:
            sessions.wake(name, "twice")
        wait_for(
            lambda: all((sessions.status(n).get("wakeCount") or 0) == 2 for n in HYBRID[:5]),
            timeout=60,
            what="five Hybrid sessions woken by the new leader",
        )
        wait_for(settled, timeout=120, interval=0.5, what="sessions settled again")
        time.sleep(3)
    for name in LONG_RUNNING:
        assert after.created[name] == history.created[name], f"{name} got a new pod"
    assert after.pods_ever("after-kill") == 1
    for name in HYBRID[:5]:
        assert len(after.created[name] - history.created[name]) == 1, name
    for name in HYBRID[5:]:
        assert after.created[name] <= history.created[name], f"{name} woke by itself"
    assert max(after.most_at_once.values()) == 1
    counts = scaled_down_counts(core, namespace)
    assert {counts[name] for name in HYBRID[:5]} == {3}, counts
    assert {counts[name] for name in HYBRID[5:]} == {2}, counts


@pytest.mark.parametrize(
    ("lease_seconds", "renew_seconds"),
    [(4.0, 1.0), (10.0, 2.0)],
    ids=["harness-4s", "chart-default-10s"],
)
def test_standby_takes_over_after_the_leader_is_killed(
    cluster_side: dict[str, Any],
    replica: Replica,
    custom: client.CustomObjectsApi,
    lease_seconds: float,
    renew_seconds: float,
) -> None:
    sessions = Sessions(custom, cluster_side["namespace"])
    replicas = [
        replica(f"r{i}", lease_seconds=lease_seconds, renew_seconds=renew_seconds) for i in range(2)
    ]
    leads: list[float] = []
    reconciled: list[float] = []
    for round_ in range(3):
        leader = the_leader(replicas)
        standby = next(r for r in replicas if r is not leader)
        time.sleep(renew_seconds * 1.5)  # steady state: renewals going on
        leader.kill()
        killed = time.monotonic()
        name = f"after-kill-{round_}"
        sessions.create(name, {"pattern": "LongRunning", "resources": small_resources()})
        wait_for(standby.is_leader, timeout=lease_seconds * 4, interval=0.05, what="takeover")
        leads.append(time.monotonic() - killed)
        sessions.wait_phase(name, "Running", timeout=60)
        reconciled.append(time.monotonic() - killed)
        # The killed replica comes back as the new standby (as its Deployment would).
        replicas = [standby, replica(f"r{round_}-back", lease_seconds, renew_seconds)]
        # A standby must wait for the Lease to run out: not before lease - renew.
        assert leads[-1] >= lease_seconds - renew_seconds - 0.5, leads
        assert leads[-1] <= lease_seconds + 3 * renew_seconds + 5, leads
    print(
        f"lease {lease_seconds:g}s / renew {renew_seconds:g}s: standby leads after "
        f"{', '.join(f'{t:.1f}' for t in leads)}s; new session Running after "
        f"{', '.join(f'{t:.1f}' for t in reconciled)}s"
    )
    record_row(lease_seconds, renew_seconds, leads, reconciled)


ROW = re.compile(r"^\| (?P<lease>[\d.]+) s \| (?P<renew>[\d.]+) s \|")


def record_row(lease: float, renew: float, leads: list[float], reconciled: list[float]) -> None:
    """Update this setting's row of docs/measurements/ha-takeover.md, keep the others."""
    rows: dict[tuple[str, str], str] = {}
    if MEASUREMENTS.exists():
        for line in MEASUREMENTS.read_text().splitlines():
            found = ROW.match(line)
            if found:
                rows[(found["lease"], found["renew"])] = line
    key = (f"{lease:g}", f"{renew:g}")
    rows[key] = (
        f"| {key[0]} s | {key[1]} s | {len(leads)} | "
        f"{statistics.median(leads):.1f} s ({min(leads):.1f} to {max(leads):.1f}) | "
        f"{statistics.median(reconciled):.1f} s ({min(reconciled):.1f} to {max(reconciled):.1f}) | "
        f"{datetime.now(UTC):%Y-%m-%d} |"
    )
    record(
        MEASUREMENTS,
        "# HA takeover time\n\n"
        "Written by `tests/integration/test_operator_ha.py::"
        "test_standby_takes_over_after_the_leader_is_killed` (run it with "
        "`CORRAL_RECORD_MEASUREMENTS=1` to refresh a row).\n\n"
        "Two `corral operator` replicas share one Lease and watch the same namespaces. The "
        "leader is SIGKILLed (no Lease release), a LongRunning session is created at once, "
        "and the test measures how long until the standby holds the Lease (its "
        "`corral_leader` metric is 1) and until the new session is `Running` (pod created "
        "by the new leader, status written). Three kills per setting; the killed replica "
        "is started again as the next standby.\n\n"
        "| lease | renew | kills | standby leads after (median, range) "
        "| new session Running after | measured |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(rows[k] for k in sorted(rows, key=lambda k: float(k[0])))
        + "\n\n"
        "Reading: a standby takes over only when the Lease record has not changed for "
        "`leaseSeconds` on its own clock, and it looks every `renewSeconds`; the leader "
        "renewed at most one renew period before it died. So the takeover lands between "
        "`lease - renew` and `lease + renew` after the kill, plus the time to list and "
        "start workers; the new session then costs one reconcile. A leader that cannot "
        "renew stops acting after `lease - renew` (see `LeaderElector._renew_deadline`), "
        "before any standby may start.\n\n"
        f"Machine: {platform.machine()}, Python {platform.python_version()}, a shared "
        "2-core test VM running the local control plane (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, KWOK) and other test runs at the same "
        "time; numbers are upper bounds rather than typical values.\n",
    )
