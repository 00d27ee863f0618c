"""The operator's store: what a reconcile sees between a write and its watch event."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from corral.controller.pods import pod_view
from corral.controller.store import Store

KEY = ("team-a", "demo")
JSON = dict[str, Any]


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


def session_body(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": KEY[0], "uid": f"s-{name}"},
        "spec": {"pattern": "Hybrid"},
    }


def fill(store: Store, name: str) -> None:
    """A session with every kind of child, a report, a wake and a held-back status."""
    key = (KEY[0], name)
    store.put_session(session_body(name))
    store.put_pod(key, pod_view(pod(f"{name}-1")), deleted=False)
    store.expect_pod(key, pod_view(pod(f"{name}-2")))
    for kind in ("Service", "NetworkPolicy", "PersistentVolumeClaim"):
        store.put_named_child(
            key, kind, name, deleted=False, live_spec='{"spec": 1}', volume_node="node-a"
        )
    store.wake_seen[key] = 1.0
    store.deferred_since[key] = 1.0


def delete_children(store: Store, name: str) -> None:
    key = (KEY[0], name)
    for pod_name in (f"{name}-1", f"{name}-2"):
        store.put_pod(key, pod_view(pod(pod_name)), deleted=True)
    for kind in ("Service", "NetworkPolicy", "PersistentVolumeClaim"):
        store.put_named_child(key, kind, name, deleted=True)


def test_a_deleted_session_leaves_nothing_behind() -> None:
    """Fix: the children's entry outlived the session and its children (1000 of 1000 were
    leaked), whichever order the session's and its children's DELETED events came in."""
    store = Store()
    names = [f"s-{i}" for i in range(1000)]
    for name in names:
        fill(store, name)
    for index, name in enumerate(names):
        if index % 2:  # the garbage collector's deletions seen first
            delete_children(store, name)
            store.drop_session((KEY[0], name))
        else:
            store.drop_session((KEY[0], name))
            delete_children(store, name)
    assert store.sessions == {}
    assert store.children == {}
    assert store.activity == {}
    assert store.wake_seen == {}
    assert store.deferred_since == {}
    assert store._versions == {}


def test_children_of_a_deleted_session_are_kept_while_they_exist() -> None:
    store = Store()
    fill(store, "demo")
    store.drop_session(KEY)
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=True)
    assert KEY in store.children  # the Service, policy, volume and one pod remain
    assert store.children[KEY].services == {"demo"}


def test_a_late_deleted_event_does_not_recreate_an_entry() -> None:
    store = Store()
    store.put_named_child(KEY, "Service", "demo", deleted=True)
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=True)
    assert store.children == {}


def test_a_pod_found_gone_is_forgotten_only_if_it_is_still_the_same_pod() -> None:
    """A delete that got 404 forgets the pod; a same-named successor is kept."""
    store = Store()
    store.put_session(session_body("demo"))
    store.put_pod(KEY, pod_view(pod("demo-1")), deleted=False)
    store.forget_pod(KEY, "demo-1", uid="uid-other")
    assert [p.name for p in store.children_of(KEY).pod_views()] == ["demo-1"]
    store.forget_pod(KEY, "demo-1", uid="uid-demo-1")
    assert store.children_of(KEY).pod_views() == []


def test_a_pod_view_keeps_a_digest_of_the_spec_annotation_not_the_annotation() -> None:
    """Fix: every PodView held its pod's runner-spec annotation, up to 200 KiB each."""
    body = pod("demo-1")
    spec = '{"prompt": "' + "p" * 200_000 + '"}'
    body["metadata"]["annotations"]["corral.dev/session-spec"] = spec  # type: ignore[index]
    view = pod_view(body)
    held = [str(getattr(view, f.name)) for f in fields(view)]
    assert max(len(value) for value in held) < 100
    other = pod("demo-1")
    other["metadata"]["annotations"]["corral.dev/session-spec"] = spec + " "  # type: ignore[index]
    assert pod_view(other).spec_digest != view.spec_digest
    assert pod_view(body).spec_digest == view.spec_digest


def versioned(
    name: str, version: str, uid: str | None = None, **status: object
) -> dict[str, object]:
    body = session_body(name)
    meta: dict[str, object] = body["metadata"]  # type: ignore[assignment]
    meta["resourceVersion"] = version
    meta["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    if uid is not None:
        meta["uid"] = uid
    body["status"] = status
    return body


def test_the_version_held_is_not_parsed_again_and_an_older_one_is_refused() -> None:
    """Our own status write, then its watch event (or a relist): the same resourceVersion
    of the same object is the same body, and parsing it again was CPU for nothing."""
    store = Store()
    held = store.put_session(versioned("demo", "5", phase="Running"))
    assert held is not None
    assert store.put_session(versioned("demo", "5", phase="Running")) is held
    assert store.put_session(versioned("demo", "4", phase="Pending")) is None
    newer = store.put_session(versioned("demo", "6", phase="Idle"))
    assert newer is not None and newer is not held
    assert store.sessions[KEY].status.phase == "Idle"


def test_a_new_session_of_the_same_name_is_taken_in_whatever_its_version() -> None:
    store = Store()
    store.put_session(versioned("demo", "5", phase="Running"))
    successor = store.put_session(versioned("demo", "5", uid="s-other"))
    assert successor is not None and successor.metadata.uid == "s-other"


def test_managed_fields_are_not_kept() -> None:
    store = Store()
    body = versioned("demo", "5")
    session = store.put_session(body)
    assert session is not None
    assert "managedFields" not in (session.metadata.model_extra or {})
    assert "managedFields" in body["metadata"]  # type: ignore[operator]  (the caller's is untouched)


def test_kubectls_copy_of_the_applied_manifest_is_not_kept() -> None:
    """`kubectl apply` puts the whole manifest in an annotation: a second copy of the spec
    per session, which nothing in the operator reads."""
    store = Store()
    body = versioned("demo", "5")
    meta: dict[str, object] = body["metadata"]  # type: ignore[assignment]
    applied = "kubectl.kubernetes.io/last-applied-configuration"
    meta["annotations"] = {applied: '{"spec": {"prompt": "' + "x" * 4000 + '"}}', "keep": "me"}
    session = store.put_session(body)
    assert session is not None
    assert session.metadata.annotations == {"keep": "me"}
    assert applied in meta["annotations"]  # type: ignore[operator]  (the caller's is untouched)


def test_a_status_write_of_the_same_generation_keeps_the_parsed_spec() -> None:
    """The API server counts spec changes in metadata.generation, and only those: a new
    version of the same generation (a status write) has the held spec, which is not parsed
    again; a new generation, or another session of the same name, is parsed in full."""
    store = Store()

    def at(version: str, generation: int, uid: str | None = None, **status: object) -> JSON:
        body = versioned("demo", version, uid, **status)
        body["metadata"]["generation"] = generation  # type: ignore[index]
        return body

    first = store.put_session(at("5", 1, phase="Pending"))
    assert first is not None
    status_write = store.put_session(at("6", 1, phase="Running"))
    assert status_write is not None and status_write is not first
    assert status_write.spec is first.spec
    assert status_write.status.phase == "Running"

    edited = at("7", 2, phase="Running")
    edited["spec"] = {**edited["spec"], "model": "claude-opus-4-1"}  # type: ignore[dict-item]
    changed = store.put_session(edited)
    assert changed is not None and changed.spec is not first.spec
    assert changed.spec.model == "claude-opus-4-1"

    replaced = store.put_session(at("8", 2, uid="s-other"))
    assert replaced is not None and replaced.spec is not changed.spec


def pod_at_version(name: str, version: str, phase: str = "Pending") -> dict[str, Any]:
    body: dict[str, Any] = pod(name)
    body["metadata"]["resourceVersion"] = version
    body["status"] = {"phase": phase}
    return body


def test_a_pods_view_is_found_again_only_for_its_own_version() -> None:
    """A create's answer and its watch event carry one version: the second is not read
    again. Another version, a pod marked deleting, or no version at all is read."""
    store = Store()
    answer = pod_view(pod_at_version("demo-1", "11"))
    store.expect_pod(KEY, answer)
    assert store.pod_at(KEY, ("Pod", "demo-1", "11")) is answer
    assert store.pod_at(KEY, ("Pod", "demo-1", "12")) is None
    assert store.pod_at(KEY, ("Pod", "demo-2", "11")) is None
    assert store.pod_at(("team-b", "demo"), ("Pod", "demo-1", "11")) is None
    running = pod_view(pod_at_version("demo-1", "12", phase="Running"))
    store.put_pod(KEY, running, deleted=False)
    assert store.pod_at(KEY, ("Pod", "demo-1", "12")) is running
    assert store.pod_at(KEY, ("Pod", "demo-1", "11")) is None
    store.mark_pod_deleting(KEY, "demo-1")
    assert store.pod_at(KEY, ("Pod", "demo-1", "12")) is None
    unversioned = pod_view(pod("demo-3"))
    store.put_pod(KEY, unversioned, deleted=False)
    assert store.pod_at(KEY, ("Pod", "demo-3", "")) is None


def test_a_version_is_not_part_of_what_a_pod_view_compares() -> None:
    """The pod's scheduling is a new version that decisions read the same: no change."""
    assert pod_view(pod_at_version("demo-1", "11")) == pod_view(pod_at_version("demo-1", "12"))


def service_at_version(version: str, port: int = 8080) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": "demo", "resourceVersion": version},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": port}]},
    }


def test_a_named_childs_state_is_read_again_only_for_another_version() -> None:
    store = Store()
    store.put_named_body(KEY, ("Service", "demo", "11"), service_at_version("11"))
    assert store.holds_named(KEY, ("Service", "demo", "11"))
    revision = store.revision(KEY)
    # The same version again (the watch event after the answer): nothing read or changed,
    # even from a body that would read differently.
    store.put_named_body(KEY, ("Service", "demo", "11"), service_at_version("11", port=1))
    assert store.revision(KEY) == revision
    assert '"port":8080' in (store.children_of(KEY).named_state("Service", "demo")[1] or "")
    # A hand edit is a new version: read, a change.
    store.put_named_body(KEY, ("Service", "demo", "12"), service_at_version("12", port=9))
    assert store.revision(KEY) != revision
    assert not store.holds_named(KEY, ("Service", "demo", "11"))
    # Deleted: forgotten, whatever its version.
    store.put_named_body(KEY, ("Service", "demo", "12"), service_at_version("12"), deleted=True)
    assert not store.holds_named(KEY, ("Service", "demo", "12"))
    assert "demo" not in store.children_of(KEY).services


def test_a_claims_node_is_read_from_a_writes_answer_too() -> None:
    """A claim found ours after a 409 may name its volume's node already."""
    store = Store()
    claim = {
        "metadata": {
            "name": "demo-state",
            "resourceVersion": "7",
            "annotations": {"volume.kubernetes.io/selected-node": "node-a"},
        }
    }
    store.put_named_body(KEY, ("PersistentVolumeClaim", "demo-state", "7"), claim)
    assert store.children_of(KEY).volume_nodes == {"demo-state": "node-a"}
    assert store.holds_named(KEY, ("PersistentVolumeClaim", "demo-state", "7"))
