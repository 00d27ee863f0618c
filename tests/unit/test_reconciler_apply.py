"""Reconciler.apply: one refused write does not stop the steps that do not depend on it.

A fake client records every write and refuses those it is told to, as an API server whose
RBAC lacks a verb would (403). The plans are the lifecycle's own where that is easy to set
up (a suspended session whose NetworkPolicy is stale), and hand-made where one dependency
is checked alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller.lifecycle import EventNote, Observed, Plan, PodDeletion, decide
from corral.controller.pods import pod_view
from corral.controller.reconciler import Reconciler
from corral.controller.store import Store
from corral.kube.client import ApiError
from corral.render import render_pod

CONFIG = OperatorConfig()
KEY = ("team-a", "demo")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeClient:
    """Writes as (verb, kind, name); `refuse` holds (verb, kind) answered with 403."""

    session: dict[str, Any]
    refuse: set[tuple[str, str]] = field(default_factory=set)
    writes: list[tuple[str, str, str]] = field(default_factory=list)

    def _write(self, verb: str, kind: str, name: str) -> None:
        if (verb, kind) in self.refuse:
            raise ApiError(403, "Forbidden", f"cannot {verb.lower()} {kind}")
        self.writes.append((verb, kind, name))

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        name = meta.get("name") or meta["generateName"]
        if manifest["kind"] == "Event":  # named at random: recorded by what it is about
            name = f"{manifest['involvedObject']['name']}."
        self._write("CREATE", manifest["kind"], name)
        return {**manifest, "metadata": {**meta, "uid": "new-uid", "resourceVersion": "1"}}

    async def patch(
        self, kind: str, namespace: str, name: str, patch: Any, sub: str | None = None
    ) -> dict[str, Any]:
        self._write("PATCH", f"{kind}/{sub}" if sub else kind, name)
        return self.session if kind == "AgentSession" else {}

    async def delete(self, kind: str, namespace: str, name: str, **_: Any) -> None:
        self._write("DELETE", kind, name)

    def did(self, verb: str, kind: str) -> list[str]:
        return [name for v, k, name in self.writes if (v, k) == (verb, kind)]


def make_session(**spec: Any) -> AgentSession:
    return AgentSession.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "s-uid", "generation": 2},
            "spec": {"pattern": "LongRunning", **spec},
            "status": {"phase": "Running", "podName": "demo-1", "attempts": 1},
        }
    )


def body(session: AgentSession) -> dict[str, Any]:
    return session.model_dump(by_alias=True, exclude_none=True, mode="json")


def reconciler(client: FakeClient, session: AgentSession) -> Reconciler:
    store = Store()
    store.put_session(body(session))
    return Reconciler(client, store, CONFIG)  # type: ignore[arg-type]


def running_pod(session: AgentSession) -> Any:
    body = render_pod(session, CONFIG, 1)
    body["metadata"]["uid"] = "pod-uid-1"
    body["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "runner", "state": {"running": {}}, "ready": True}],
    }
    return pod_view(body)


async def test_a_refused_network_policy_patch_blocks_no_other_step() -> None:
    """Suspending a session whose NetworkPolicy is stale (e.g. after an operator config
    change): the policy patch is refused, yet the pod is deleted, the status written and
    the Suspended Event posted; the refusal is raised afterwards, for a retry."""
    session = make_session(suspend=True)
    observed = Observed(
        session=session,
        pods=[running_pod(session)],
        has_service=True,
        has_network_policy=True,
        live_specs={"NetworkPolicy": '{"stale": true}'},
        has_pvc=False,
        now=NOW,
    )
    plan = decide(observed, CONFIG)
    assert [kind for kind, _, _ in plan.patch_children] == ["NetworkPolicy"]
    [deletion] = plan.delete_pods
    assert plan.events

    client = FakeClient(body(session), refuse={("PATCH", "NetworkPolicy")})
    with pytest.raises(ApiError) as raised:
        await reconciler(client, session).apply(KEY, session, plan)
    assert raised.value.status == 403
    assert client.did("PATCH", "AgentSession/status") == ["demo"]
    assert client.did("DELETE", "Pod") == [deletion.name]
    reasons = client.did("CREATE", "Event")
    # The plan's Events, and a Warning that says the policy could not be patched.
    assert len(reasons) == len(plan.events) + 1


def hand_plan(**fields: Any) -> Plan:
    plan = Plan(
        patch_children=[("NetworkPolicy", "demo", {"spec": {}})],
        patch_pods=[("demo-1", {"metadata": {"labels": {"x": "y"}}})],
        delete_pods=[PodDeletion("demo-0", "old-uid", "Duplicate")],
        status_patch={"phase": "Running"},
        events=[EventNote("Normal", "Something", "happened")],
        delete_session=True,
    )
    for name, value in fields.items():
        setattr(plan, name, value)
    return plan


@pytest.mark.parametrize(
    "refused",
    [("PATCH", "NetworkPolicy"), ("PATCH", "Pod"), ("DELETE", "Pod"), ("CREATE", "Service")],
)
async def test_independent_steps_go_ahead(refused: tuple[str, str]) -> None:
    session = make_session()
    plan = hand_plan(create=[{"kind": "Service", "metadata": {"name": "demo"}}])
    client = FakeClient(body(session), refuse={refused})
    with pytest.raises(ApiError):
        await reconciler(client, session).apply(KEY, session, plan)
    expected = {
        ("PATCH", "AgentSession/status", "demo"),
        ("PATCH", "NetworkPolicy", "demo"),
        ("PATCH", "Pod", "demo-1"),
        ("DELETE", "Pod", "demo-0"),
        ("DELETE", "AgentSession", "demo"),
        ("CREATE", "Service", "demo"),
        ("CREATE", "Event", "demo."),
    }
    made = set(client.writes)
    assert made == expected - {(refused[0], refused[1], n) for n in ("demo", "demo-0", "demo-1")}


async def test_a_failed_pod_create_holds_back_the_status_that_names_it() -> None:
    """The status would name a pod that does not exist, the deletions wait for the status,
    and the Events are decided again on the retry; the rest goes ahead."""
    session = make_session()
    pod = {"kind": "Pod", "metadata": {"name": "demo-2"}}
    plan = hand_plan(create=[pod, {"kind": "Service", "metadata": {"name": "demo"}}])
    client = FakeClient(body(session), refuse={("CREATE", "Pod")})
    with pytest.raises(ApiError):
        await reconciler(client, session).apply(KEY, session, plan)
    assert client.did("PATCH", "AgentSession/status") == []
    assert client.did("DELETE", "Pod") == []
    assert client.did("CREATE", "Service") == ["demo"]
    assert client.did("PATCH", "NetworkPolicy") == ["demo"]
    assert client.did("DELETE", "AgentSession") == ["demo"]
    # Only the Warning about the refused create: the plan's own Event waits.
    assert client.did("CREATE", "Event") == ["demo."]


async def test_a_failed_status_write_holds_back_pod_deletions_and_events() -> None:
    """A finished pod is deleted only once its outcome is recorded."""
    session = make_session()
    client = FakeClient(body(session), refuse={("PATCH", "AgentSession/status")})
    with pytest.raises(ApiError):
        await reconciler(client, session).apply(KEY, session, hand_plan())
    assert client.did("DELETE", "Pod") == []
    assert client.did("CREATE", "Event") == []
    assert client.did("PATCH", "NetworkPolicy") == ["demo"]


async def test_a_plan_without_failures_raises_nothing() -> None:
    session = make_session()
    client = FakeClient(body(session))
    await reconciler(client, session).apply(KEY, session, hand_plan())
    assert len(client.writes) == 6


async def test_a_ttls_child_deletions_wait_for_the_status_with_their_event() -> None:
    """`cleanupAfterFinished: Children`: the Service and NetworkPolicy go with the status
    write and the ChildrenDeleted Event; were they deleted while the status failed, the
    retry would find nothing left to delete and the Event would never be posted."""
    session = make_session()
    plan = hand_plan(
        delete_children=[("Service", "demo"), ("NetworkPolicy", "demo")],
        events=[EventNote("Normal", "ChildrenDeleted", "deleted the Service and NetworkPolicy")],
        delete_pods=[],
        delete_session=False,
    )
    refused = FakeClient(body(session), refuse={("PATCH", "AgentSession/status")})
    with pytest.raises(ApiError):
        await reconciler(refused, session).apply(KEY, session, plan)
    assert refused.did("DELETE", "Service") == refused.did("DELETE", "NetworkPolicy") == []
    assert refused.did("CREATE", "Event") == []
    accepted = FakeClient(body(session))
    await reconciler(accepted, session).apply(KEY, session, plan)
    assert accepted.did("DELETE", "Service") == accepted.did("DELETE", "NetworkPolicy") == ["demo"]
    assert accepted.did("CREATE", "Event") != []
