"""Scenario 4: the operator's watches are cut, and what happened meanwhile is gone from the
API server's history, so every informer gets 410 Gone and must list again.

The operator reaches the API server through a proxy the test cuts. During the gap: a seventh
of the sessions are deleted (their children go with them, by the garbage collector), ten
LongRunning sessions lose their pod, ten sessions their Service and ten their
NetworkPolicy; then the API server is restarted without a watch cache (Kubernetes 1.34 has
no flag for a small one: `--watch-cache-sizes` only turns it off) and etcd's history is
compacted to its newest revision. When the proxy heals, every watch the operator resumes
from its old resourceVersion is answered 410. It must: forget the deleted sessions (never
make a pod, Service or volume for them again), replace the lost pods and children, and
leave everything else alone."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from chaos_scenarios import by_index, start_sleepers
from chaos_support import OperatorFigures, record_figures
from chaos_world import World
from kubernetes import client

from corral.render.meta import SESSION_LABEL
from corral.testing.kube import wait_for
from corral.testing.load import (
    Expected,
    PodHistory,
    claim_of,
    claim_uids,
    retrying,
    runner_pods,
)
from corral.testing.tcp_proxy import CuttableProxy

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
MANAGED = "app.kubernetes.io/managed-by=corral"


def children_by_session(world: World, kind: str) -> dict[str, set[str]]:
    """Names of a child kind (Service, NetworkPolicy) in the load namespace, by owner."""
    if kind == "Service":
        items = retrying(
            lambda: world.core.list_namespaced_service(world.namespace, label_selector=MANAGED)
        ).items
    else:
        network = client.NetworkingV1Api(world.api)
        items = retrying(
            lambda: network.list_namespaced_network_policy(world.namespace, label_selector=MANAGED)
        ).items
    found: dict[str, set[str]] = defaultdict(set)
    for item in items:
        for owner in item.metadata.owner_references or []:
            found[owner.name].add(item.metadata.name)
    return found


def test_watches_expire_and_the_operator_lists_again(world: World) -> None:
    load = world.load
    proxy = CuttableProxy(world.plane.layout.ports["apiserver"])
    through_proxy = proxy.kubeconfig(
        world.identity.kubeconfig, world.workdir / "proxied.kubeconfig"
    )
    operator = world.operator("chaos-watch", kubeconfig=through_proxy)
    operator.wait_leader()
    network = client.NetworkingV1Api(world.api)
    try:
        with PodHistory(world.core, world.namespace) as history:
            start_sleepers(world, operator)
            for future in world.create(by_index(load.awake)):
                future.result()
            for sleeper in load.sleepers:
                world.sessions.patch(sleeper, {"spec": {"idleTimeout": "1s"}})
            steady = Expected(awake=set(load.awake), asleep=set(load.sleepers))
            world.converge(steady)
            services = children_by_session(world, "Service")
            policies = children_by_session(world, "NetworkPolicy")

            everyone = by_index(load.all)
            gone = set(everyone[::7])  # every role
            kept = [n for n in everyone if n not in gone]
            lost_pod = [n for n in load.long_running if n not in gone][:10]
            lost_service = [n for n in kept if n in services and n not in lost_pod][:10]
            lost_policy = [n for n in kept if n in policies and n not in lost_pod + lost_service][
                :10
            ]
            claims = {
                claim: uid
                for claim, uid in claim_uids(world.core, world.namespace).items()
                if claim not in {claim_of(n) for n in gone}
            }
            figures = OperatorFigures(operator).start()

            proxy.cut()
            cut = time.monotonic()
            wait_for(lambda: not operator.is_leader(), timeout=30, what="the operator to step down")
            for name in sorted(gone):
                world.sessions.delete(name)
            pods = {
                (p.metadata.labels or {}).get(SESSION_LABEL): p
                for p in runner_pods(world.core, world.namespace)
            }
            for name in lost_pod:
                world.core.delete_namespaced_pod(
                    pods[name].metadata.name, world.namespace, grace_period_seconds=0
                )
            for name in lost_service:
                for service in services[name]:
                    world.core.delete_namespaced_service(service, world.namespace)
            for name in lost_policy:
                for policy in policies[name]:
                    network.delete_namespaced_network_policy(policy, world.namespace)
            deleted = time.monotonic()

            def children_collected() -> bool:
                left = {
                    (p.metadata.labels or {}).get(SESSION_LABEL)
                    for p in runner_pods(world.core, world.namespace)
                }
                return not left & gone

            wait_for(children_collected, timeout=60, what="the deleted sessions' pods collected")
            restart = world.plane.restart("kube-apiserver", ("--watch-cache=false",))
            revision = world.plane.compact()
            requests_before = operator.metric("corral_kube_requests_total", 'verb="GET"')
            proxy.heal()
            healed = time.monotonic()

            expected = Expected(
                awake=set(load.awake) - gone, asleep=set(load.sleepers) - gone, claims=claims
            )
            converge = world.converge(expected)
            want_services = {n: s for n, s in services.items() if n not in gone}
            want_policies = {n: s for n, s in policies.items() if n not in gone}
            wait_for(
                lambda: (
                    children_by_session(world, "Service") == want_services
                    and children_by_session(world, "NetworkPolicy") == want_policies
                ),
                timeout=60,
                what="every lost Service and NetworkPolicy made again, none for deleted sessions",
            )
            children_back = time.monotonic() - healed
            wait_for(
                lambda: operator.metric("corral_sessions") == len(kept),
                timeout=60,
                what=f"the operator to know {len(kept)} sessions (the deleted ones forgotten)",
            )
            time.sleep(3)  # and nothing more happens
            lists = operator.metric("corral_kube_requests_total", 'verb="GET"') - requests_before
    finally:
        proxy.close()
        world.plane.restart("kube-apiserver")

    made_for_gone = {n: history.created_after(n, deleted) for n in gone}
    assert not any(made_for_gone.values()), f"pods made for deleted sessions: {made_for_gone}"
    assert not history.duplicates(), history.duplicates()
    for name in lost_pod:
        assert history.pods_ever(name) == 2, f"{name}: {history.created[name]}"
    for name in kept:
        if name not in lost_pod:
            assert history.pods_ever(name) == 1, f"{name}: {history.created[name]}"
    record_figures(
        "4 watches cut, history compacted (410 Gone), deletions in the gap",
        {
            "sessions": len(load.all),
            **load.counts(),
            "in_the_gap": (
                f"{len(gone)} sessions deleted, {len(lost_pod)} pods, {len(lost_service)} "
                f"Services, {len(lost_policy)} NetworkPolicies deleted"
            ),
            "gap_seconds": round(healed - cut, 1),
            "apiserver_restart_seconds": round(restart, 1),
            "etcd_compacted_to_revision": revision,
            "operator_get_requests_after_heal": int(lists),
            "operator_done_after_heal_seconds": converge["operator_done"],
            "converged_after_heal_seconds": converge["converged"],
            "children_back_after_heal_seconds": round(children_back, 1),
            "pods_made_for_deleted_sessions": 0,
            "duplicate_pods": 0,
            **figures.since(),
        },
    )
