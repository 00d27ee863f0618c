"""The operator's store: what a reconcile sees between a write and its watch event."""

from __future__ import annotations

from corral.controller.pods import pod_view
from corral.controller.store import Store

KEY = ("team-a", "demo")


def pod(name: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "annotations": {"corral.dev/attempt": "1"},
            "ownerReferences": [{"kind": "AgentSession", "controller": True, "uid": "s"}],
        },
        "status": {"phase": "Pending"},
    }


def test_a_created_pod_counts_before_its_watch_event() -> None:
    store = Store()
    store.expect_pod(KEY, pod_view(pod("demo-1")))
    assert [p.name for p in store.children_of(KEY).pod_views()] == ["demo-1"]
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=False)
    assert [p.name for p in store.children_of(KEY).pod_views()] == ["demo-1"]


def test_a_created_pod_deleted_before_any_reconcile_is_gone() -> None:
    """ADDED and DELETED both arrive before the next reconcile reads the store: the pod
    must not linger as "expected" (the lifecycle would wait a minute to replace it)."""
    store = Store()
    store.expect_pod(KEY, pod_view(pod("demo-1")))
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=False)
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=True)
    assert store.children_of(KEY).pod_views() == []


def test_deletion_marked_at_once() -> None:
    store = Store()
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=False)
    store.mark_pod_deleting(KEY, "demo-1")
    (view,) = store.children_of(KEY).pod_views()
    assert view.deleting
