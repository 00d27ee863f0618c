"""A pod the status names but the store lacks is looked up before it is replaced.

The store lags behind the cluster after an API server outage (the pod watch backing off or
relisting, a created pod's expectation expired before its watch event came). Replacing the
pod on the store's word alone made a second pod beside the first (issue 16's chaos run:
two pods of one Hybrid session at once). The reconciler now GETs the pod once: found and
ours, the store expects it and nothing is created; not found, the next attempt is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from test_lifecycle import CONFIG
from test_reconciler_apply import KEY, FakeClient, body

from corral.api.v1alpha1 import AgentSession
from corral.controller.reconciler import Reconciler
from corral.controller.store import Store
from corral.kube.client import ApiError
from corral.render import network_policy_name, pod_name, pvc_name, render_pod, service_name


@dataclass
class LookupClient(FakeClient):
    """FakeClient that also answers GETs of pods: `pods` by name, else 404."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.gets.append(f"{kind}/{name}")
        if kind == "Pod" and name in self.pods:
            return self.pods[name]
        raise ApiError(404, "NotFound", f"{kind} {name} not found")


def session_with_pod(pattern: str) -> AgentSession:
    """A session whose status names its first pod, with every child but the pod held."""
    base = AgentSession.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "s-uid", "generation": 1},
            "spec": {"pattern": pattern, **({"prompt": "hi"} if pattern == "Ephemeral" else {})},
        }
    )
    status = {"phase": "Running", "podName": pod_name(base, 1), "attempts": 1}
    return base.model_copy(update={"status": type(base.status).model_validate(status)})


def reconciler_for(client: LookupClient, session: AgentSession) -> Reconciler:
    store = Store()
    store.put_session(body(session))
    children = store.children_of(KEY)
    children.services.add(service_name(session))
    children.network_policies.add(network_policy_name(session))
    children.pvcs.add(pvc_name(session))
    return Reconciler(client, store, CONFIG)  # type: ignore[arg-type]


def the_cluster_pod(session: AgentSession, owner_uid: str = "s-uid") -> dict[str, Any]:
    pod = render_pod(session, CONFIG, 1)
    pod["metadata"]["uid"] = "pod-uid-1"
    for owner in pod["metadata"]["ownerReferences"]:
        owner["uid"] = owner_uid
    pod["status"] = {"phase": "Running"}
    return pod


@pytest.mark.parametrize("pattern", ["LongRunning", "Hybrid", "Ephemeral"])
async def test_a_pod_the_watch_has_not_shown_is_not_replaced(pattern: str) -> None:
    session = session_with_pod(pattern)
    first = pod_name(session, 1)
    client = LookupClient(body(session), pods={first: the_cluster_pod(session)})
    reconciler = reconciler_for(client, session)

    await reconciler.reconcile(KEY)

    assert client.gets == [f"Pod/{first}"]
    assert client.did("CREATE", "Pod") == [], "a second pod beside the first"
    observed = reconciler.observe(KEY)
    assert observed is not None and [p.name for p in observed.pods] == [first]
    # Expected now, as after our own create: the next reconcile does not look again.
    await reconciler.reconcile(KEY)
    assert client.gets == [f"Pod/{first}"] and client.did("CREATE", "Pod") == []


@pytest.mark.parametrize("pattern", ["LongRunning", "Hybrid"])
async def test_a_pod_that_is_gone_is_replaced_after_one_lookup(pattern: str) -> None:
    session = session_with_pod(pattern)
    client = LookupClient(body(session))
    await reconciler_for(client, session).reconcile(KEY)
    assert client.gets == [f"Pod/{pod_name(session, 1)}"]
    assert client.did("CREATE", "Pod") == [pod_name(session, 2)]


async def test_a_pod_of_that_name_owned_by_another_session_counts_as_gone() -> None:
    session = session_with_pod("LongRunning")
    first = pod_name(session, 1)
    stranger = the_cluster_pod(session, owner_uid="someone-else")
    client = LookupClient(body(session), pods={first: stranger})
    await reconciler_for(client, session).reconcile(KEY)
    assert client.did("CREATE", "Pod") == [pod_name(session, 2)]


async def test_a_failed_lookup_creates_nothing() -> None:
    """The API server does not answer: retried later (the error is raised), no pod made."""

    @dataclass
    class Unreachable(LookupClient):
        async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
            raise ApiError(503, "ServiceUnavailable", "etcd is away")

    session = session_with_pod("Hybrid")
    client = Unreachable(body(session))
    with pytest.raises(ApiError):
        await reconciler_for(client, session).reconcile(KEY)
    assert client.writes == []
