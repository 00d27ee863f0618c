"""The operator's in-memory picture of the cluster, fed by watch events.

Sessions are kept parsed; children only as what the lifecycle needs (pod views, names).
Writes the operator makes are recorded here at once ("expectations"), so a reconcile that
runs before the watch catches up neither recreates a pod it just made nor loses a status
it just wrote.

Each session's picture has a revision, moved by every change a decision could read (and
only by those), so the controller can tell a watch event that changed nothing (the echo
of its own write, a pod's scheduling, a relist) from one to act on.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from corral.api.v1alpha1 import AgentSession
from corral.controller.drift import live_spec
from corral.controller.echoes import Echoes, ObjectVersion
from corral.controller.echoes import Key as Key  # (namespace, session name)
from corral.controller.lifecycle import Activity
from corral.controller.pods import SELECTED_NODE_ANNOTATION, PodView, pod_view
from corral.controller.unreadable import Unreadable

# A created pod the watch has not shown yet is assumed to exist for this long.
EXPECTATION_SECONDS = 60.0
# Written by `kubectl apply` on every object it applies: the whole last-applied manifest.
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def _resource_version(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass(slots=True)
class SessionChildren:
    pods: dict[str, PodView] = field(default_factory=dict)
    expected_pods: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    network_policies: set[str] = field(default_factory=set)
    # (kind, name) -> the owned fields of a Service's or NetworkPolicy's live spec, as
    # canonical JSON (see controller.drift): hand edits are found by comparing them.
    live_specs: dict[tuple[str, str], str] = field(default_factory=dict)
    # (kind, name) -> the resourceVersion the Service's, NetworkPolicy's or claim's state
    # above was read from (see Store.holds_named).
    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    pvcs: set[str] = field(default_factory=set)
    # Claim name -> the node its volume was made for (the scheduler's selected-node
    # annotation), to name it when a pod cannot go back there.
    volume_nodes: dict[str, str] = field(default_factory=dict)

    def names_of(self, kind: str) -> set[str]:
        return {
            "Service": self.services,
            "NetworkPolicy": self.network_policies,
            "PersistentVolumeClaim": self.pvcs,
        }[kind]

    def named_state(self, kind: str, name: str) -> tuple[bool, str | None, str | None]:
        """What decisions read of a Service, NetworkPolicy or claim."""
        return (
            name in self.names_of(kind),
            self.live_specs.get((kind, name)),
            self.volume_nodes.get(name),
        )

    def pod_views(self) -> list[PodView]:
        now = time.monotonic()
        for name, (_, until) in list(self.expected_pods.items()):
            if name in self.pods or until < now:
                del self.expected_pods[name]
        return list(self.pods.values()) + [view for view, _ in self.expected_pods.values()]

    @property
    def empty(self) -> bool:
        return not (
            self.pods
            or self.expected_pods
            or self.services
            or self.network_policies
            or self.live_specs
            or self.pvcs
            or self.volume_nodes
        )


class Store:
    """Everything kept per session is dropped with the session (see drop_session); a
    session's children are kept while any of them still exists, and freed with the last."""

    def __init__(self) -> None:
        self.sessions: dict[Key, AgentSession] = {}
        self._versions: dict[Key, int] = {}
        self.children: dict[Key, SessionChildren] = {}
        self.activity: dict[Key, Activity] = {}
        # When a runner's report last queued a reconcile (monotonic): see on_activity.
        self.activity_queued_at: dict[Key, float] = {}
        # When a wake was first seen, for the wake-latency metric.
        self.wake_seen: dict[Key, float] = {}
        # When a session's first "starting" status was first held back (see the reconciler).
        self.deferred_since: dict[Key, float] = {}
        # Child names taken by objects that are not the session's: "kind/name" -> why.
        self.name_conflicts: dict[Key, dict[str, str]] = {}
        # Sessions stored by the API server that the models refuse (see controller.unreadable).
        self.unreadable: dict[Key, Unreadable] = {}
        # Pods whose resize (end of the start-up CPU boost) the API server refused.
        self.resize_refused: set[tuple[Key, str]] = set()
        # When this replica last became leader, and so began to hear runners' activity
        # reports (None while it does not lead): no idle scale-down before it could have
        # heard a busy runner's heartbeat (see lifecycle.Observed.leading_since).
        self.leading_since: datetime | None = None
        # Key -> the revision of its picture (see `revision`): values of one counter, never
        # reused, so a session deleted and made again under its name cannot repeat one.
        self._revisions: dict[Key, int] = {}
        self._revision_counter = itertools.count(1)
        # What the reconciles running now wrote, and the events they held (see echoes).
        self.echoes = Echoes()

    def revision(self, key: Key) -> int:
        """Moves whenever the session, its children's views or their names change: equal
        revisions, equal decisions (activity reports, which are coalesced on their own, and
        the clock are not part of it)."""
        return self._revisions.get(key, 0)

    def _changed(self, key: Key) -> None:
        self._revisions[key] = next(self._revision_counter)

    def children_of(self, key: Key) -> SessionChildren:
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = SessionChildren()
        return found

    def put_session(self, body: dict[str, Any]) -> AgentSession | None:
        """Store a session body unless an older version than the one held.

        The version held already (our own status write, then its watch event; a relist) is
        not parsed again: the same resourceVersion of the same object is the same body; nor
        is the spec of a new version of the same generation.
        `metadata.managedFields` is not kept, nor kubectl's last-applied-configuration
        annotation (nothing reads them; they are most of a held session's metadata, and the
        annotation is a second copy of the whole spec for every session `kubectl apply`
        made)."""
        meta = body.get("metadata") or {}
        version = _resource_version(body)
        held_key = (str(meta.get("namespace")), str(meta.get("name")))
        held = self.sessions.get(held_key)
        if version and held is not None and held.metadata.uid == meta.get("uid"):
            if version < self._versions.get(held_key, 0):
                return None
            if version == self._versions.get(held_key):
                return held
        annotations = meta.get("annotations")
        if not isinstance(annotations, dict) or LAST_APPLIED_ANNOTATION not in annotations:
            annotations = None
        if "managedFields" in meta or annotations is not None:
            kept = {k: v for k, v in meta.items() if k != "managedFields"}
            if annotations is not None:
                kept["annotations"] = {
                    k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION
                }
            body = {**body, "metadata": kept}
        generation = meta.get("generation")
        if (
            held is not None
            and generation is not None
            and held.metadata.uid == meta.get("uid")
            and held.metadata.generation == generation
        ):
            # Same generation, same spec (the API server counts every spec change, and only
            # those): the held spec is reused, not validated again. Most session events are
            # status writes, the operator's own among them.
            body = {**body, "spec": held.spec}
        session = AgentSession.model_validate(body)
        key = (session.metadata.namespace, session.metadata.name)
        if version and version < self._versions.get(key, 0):
            return None
        self._versions[key] = version
        self.sessions[key] = session
        self._changed(key)
        self.unreadable.pop(key, None)
        return session

    def version_of(self, key: Key) -> int:
        """The resourceVersion of the session body held (0: none)."""
        return self._versions.get(key, 0)

    def drop_session(self, key: Key) -> None:
        self.sessions.pop(key, None)
        self._versions.pop(key, None)
        self.activity.pop(key, None)
        self.activity_queued_at.pop(key, None)
        self.wake_seen.pop(key, None)
        self.deferred_since.pop(key, None)
        self.name_conflicts.pop(key, None)
        self.unreadable.pop(key, None)
        self.resize_refused = {entry for entry in self.resize_refused if entry[0] != key}
        self._changed(key)
        self._free_if_unused(key)

    def _free_if_unused(self, key: Key) -> None:
        """Forget a session's children once the session is gone and none of them is left.
        Fix: the entry used to outlive both (the garbage collector deletes the children
        after the session), one per session ever made."""
        children = self.children.get(key)
        if children is not None and key not in self.sessions and children.empty:
            del self.children[key]
            self._revisions.pop(key, None)

    def put_pod(self, key: Key, view: PodView, deleted: bool) -> None:
        if deleted:
            self.forget_pod(key, view.name)
            return
        children = self.children_of(key)
        expected = children.expected_pods.get(view.name)
        held = children.pods.get(view.name) or (expected[0] if expected else None)
        children.pods[view.name] = view
        if view != held:  # else the pod as already known (our create, a relist)
            self._changed(key)

    def update_pod(self, key: Key, view: PodView) -> None:
        """Keep our own write to a pod that is still the one known by that name."""
        children = self.children.get(key)
        known = children.pods.get(view.name) if children is not None else None
        if children is not None and known is not None and known.uid == view.uid:
            children.pods[view.name] = view
            if view != known:
                self._changed(key)

    def forget_pod(self, key: Key, name: str, uid: str | None = None) -> None:
        """The pod is gone (its DELETED event, or a delete that found nothing); with `uid`,
        only if the pod known by that name is still that one."""
        children = self.children.get(key)
        if children is None:
            return
        known = children.pods.get(name)
        if uid is None or known is None or known.uid == uid:
            if children.pods.pop(name, None) is not None:
                self._changed(key)
            self.resize_refused.discard((key, name))
        expected = children.expected_pods.get(name)
        # Fix: a pod created and deleted again before any reconcile read the store was
        # still "expected" (assumed to exist) for EXPECTATION_SECONDS: no replacement for
        # a minute. Its DELETED event settles it.
        if expected is not None and (uid is None or expected[0].uid == uid):
            del children.expected_pods[name]
            self._changed(key)
        self._free_if_unused(key)

    def expect_pod(self, key: Key, view: PodView) -> None:
        self.children_of(key).expected_pods[view.name] = (
            view,
            time.monotonic() + EXPECTATION_SECONDS,
        )
        self._changed(key)

    def pod_at(self, key: Key, version: ObjectVersion) -> PodView | None:
        """The view held of this very version of a pod, if any. A create's answer and its
        watch event (in either order), or a relist, bring one version twice: the second
        need not be read again."""
        _, name, resource_version = version
        children = self.children.get(key)
        if children is None or not resource_version:
            return None
        view = children.pods.get(name)
        if view is None and name in children.expected_pods:
            view = children.expected_pods[name][0]
        return view if view is not None and view.resource_version == resource_version else None

    def view_of_pod(self, key: Key, version: ObjectVersion, body: dict[str, Any]) -> PodView:
        """The view of this version of a pod: the one held (see pod_at), else read from
        `body`, whichever of a create's answer and its watch event brings it."""
        return self.pod_at(key, version) or pod_view(body)

    def mark_pod_deleting(self, key: Key, name: str) -> None:
        children = self.children_of(key)
        if name in children.pods:
            # No longer the view of its version: the version's own events read it again.
            children.pods[name] = replace(children.pods[name], deleting=True, resource_version="")
        children.expected_pods.pop(name, None)
        self._changed(key)

    def holds_named(self, key: Key, version: ObjectVersion) -> bool:
        """Whether the state held of a Service, NetworkPolicy or claim was read from this
        very version of it (see pod_at)."""
        kind, name, resource_version = version
        children = self.children.get(key)
        return (
            bool(resource_version)
            and children is not None
            and name in children.names_of(kind)
            and children.versions.get((kind, name)) == resource_version
        )

    def put_named_body(
        self, key: Key, version: ObjectVersion, body: dict[str, Any], deleted: bool = False
    ) -> None:
        """A Service, NetworkPolicy or claim, from a watch event, a write's answer or a read.
        One held already at this version is not read again (see pod_at)."""
        if not deleted and self.holds_named(key, version):
            return
        kind, name, resource_version = version
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        node = annotations.get(SELECTED_NODE_ANNOTATION)
        self.put_named_child(
            key, kind, name, deleted, live_spec(kind, body), node, resource_version
        )

    def put_named_child(
        self,
        key: Key,
        kind: str,
        name: str,
        deleted: bool,
        live_spec: str | None = None,
        volume_node: str | None = None,
        resource_version: str = "",
    ) -> None:
        if deleted and key not in self.children:
            return
        children = self.children_of(key)
        if deleted or not resource_version:
            children.versions.pop((kind, name), None)
        else:
            children.versions[(kind, name)] = resource_version
        names = children.names_of(kind)
        before = children.named_state(kind, name)
        if deleted or volume_node is None:
            children.volume_nodes.pop(name, None)
        elif kind == "PersistentVolumeClaim":
            children.volume_nodes[name] = volume_node
        if deleted or live_spec is None:
            children.live_specs.pop((kind, name), None)
        else:
            children.live_specs[(kind, name)] = live_spec
        if deleted:
            names.discard(name)
        else:
            names.add(name)
        if children.named_state(kind, name) != before:
            self._changed(key)
        if deleted:
            self._free_if_unused(key)
