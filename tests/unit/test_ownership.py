"""A create answered 409 AlreadyExists counts only when the object is the session's own.

The reconciler against an in-memory API (no cluster): a Service of the session's name that
someone else made means no pod, a condition and one Warning Event; once it is gone the
session gets its own and starts.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from corral.api import runtime
from corral.config import OperatorConfig
from corral.controller.ownership import name_taken_message, owned_by
from corral.controller.reconciler import Reconciler
from corral.controller.store import Store
from corral.kube.client import ApiError

UID = "11111111-2222-3333-4444-555555555555"
SESSION = {
    "apiVersion": "corral.dev/v1alpha1",
    "kind": "AgentSession",
    "metadata": {
        "name": "web",
        "namespace": "ns",
        "uid": UID,
        "generation": 1,
        "resourceVersion": "1",
    },
    "spec": {"pattern": "LongRunning"},
}
FOREIGN = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"}}

# Runners get a key from the operator (sessions without one never start).
KEYED = OperatorConfig(runner_env={runtime.ENV_API_KEY: "sk-ant-test"})


class FakeApi:
    """Creates, gets and status patches, as the API server answers them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.session = copy.deepcopy(SESSION)
        self.events: list[dict[str, Any]] = []

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind, name = manifest["kind"], manifest["metadata"].get("name")
        if kind == "Event":
            self.events.append(manifest)
            return manifest
        if (kind, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        self.objects[(kind, name)] = manifest
        return manifest

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        found = self.objects.get((kind, name))
        if found is None:
            raise ApiError(404, "NotFound", f"{name} not found")
        return found

    async def patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], sub: Any = None
    ) -> dict[str, Any]:
        assert (kind, sub) == ("AgentSession", "status")
        status = {**self.session.get("status", {}), **patch["status"]}
        self.session["status"] = {k: v for k, v in status.items() if v is not None}
        version = int(self.session["metadata"]["resourceVersion"]) + 1
        self.session["metadata"]["resourceVersion"] = str(version)
        return copy.deepcopy(self.session)

    def kinds(self) -> list[str]:
        return sorted(kind for kind, _ in self.objects)


def reconcile(reconciler: Reconciler) -> Any:
    return asyncio.run(reconciler.reconcile(("ns", "web")))


def test_a_foreign_service_means_no_pod_until_it_is_gone() -> None:
    api = FakeApi()
    api.objects[("Service", "web")] = FOREIGN
    store = Store()
    store.put_session(copy.deepcopy(SESSION))
    reconciler = Reconciler(api, store, KEYED)  # type: ignore[arg-type]

    first = reconcile(reconciler)
    assert "Pod" not in api.kinds()  # the policy was made first, the pod not at all
    assert api.kinds() == ["NetworkPolicy", "Service"]
    assert first.requeue_after == 0.0  # decided again at once, knowing the name is taken
    assert list(reconciler.name_conflicts[("ns", "web")]) == ["Service/web"]

    second = reconcile(reconciler)
    conditions = {c["type"]: c for c in api.session["status"]["conditions"]}
    assert conditions["ChildrenReady"]["reason"] == "NameTaken"
    assert "Service 'web' already exists" in conditions["ChildrenReady"]["message"]
    assert [(e["type"], e["reason"]) for e in api.events] == [("Warning", "NameTaken")]
    assert "Pod" not in api.kinds()
    assert second.requeue_after is not None and second.requeue_after > 0

    reconcile(reconciler)  # still taken: no second Event, still no pod
    assert len(api.events) == 1 and "Pod" not in api.kinds()

    del api.objects[("Service", "web")]
    freed = reconcile(reconciler)  # the Service is ours now; decide again
    assert api.objects[("Service", "web")]["metadata"]["ownerReferences"][0]["uid"] == UID
    assert freed.requeue_after == 0.0
    reconcile(reconciler)
    assert "Pod" in api.kinds()
    assert "ChildrenReady" not in {c["type"] for c in api.session["status"]["conditions"]}


def test_our_own_object_after_409_is_simply_ours() -> None:
    api = FakeApi()
    store = Store()
    store.put_session(copy.deepcopy(SESSION))
    reconciler = Reconciler(api, store, KEYED)  # type: ignore[arg-type]
    reconcile(reconciler)
    made = api.kinds()
    assert "Pod" in made
    # The operator restarts and has not seen its children on a watch yet: every create
    # meets 409, each object is ours, and nothing is reported.
    fresh = Reconciler(api, Store(), KEYED)  # type: ignore[arg-type]
    fresh.store.put_session(copy.deepcopy(api.session))
    asyncio.run(fresh.reconcile(("ns", "web")))
    assert ("ns", "web") not in fresh.name_conflicts
    assert not [e for e in api.events if e["type"] == "Warning"]


def test_owner_is_checked_by_uid() -> None:
    ours = {"metadata": {"ownerReferences": [{"controller": True, "uid": UID}]}}
    predecessor = {
        "metadata": {
            "ownerReferences": [
                {"controller": True, "uid": "old", "kind": "AgentSession", "name": "web"}
            ]
        }
    }
    assert owned_by(ours, UID)
    assert not owned_by(predecessor, UID)
    assert not owned_by(FOREIGN, UID)
    assert not owned_by(ours, None)
    assert "AgentSession 'web'" in name_taken_message("Service", "web", predecessor)
    assert "no controlling owner" in name_taken_message("Service", "web", FOREIGN)
