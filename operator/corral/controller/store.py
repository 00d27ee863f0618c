"""The operator's in-memory picture of the cluster, fed by watch events.

Sessions are kept parsed; children only as what the lifecycle needs (pod views, names).
Writes the operator makes are recorded here at once ("expectations"), so a reconcile that
runs before the watch catches up neither recreates a pod it just made nor loses a status
it just wrote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from corral.api.v1alpha1 import AgentSession
from corral.controller.lifecycle import Activity
from corral.controller.pods import PodView

Key = tuple[str, str]  # (namespace, session name)
# A created pod the watch has not shown yet is assumed to exist for this long.
EXPECTATION_SECONDS = 60.0


def _resource_version(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class SessionChildren:
    pods: dict[str, PodView] = field(default_factory=dict)
    expected_pods: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    network_policies: set[str] = field(default_factory=set)
    # (kind, name) -> the owned fields of a Service's or NetworkPolicy's live spec, as
    # canonical JSON (see controller.drift): hand edits are found by comparing them.
    live_specs: dict[tuple[str, str], str] = field(default_factory=dict)
    pvcs: set[str] = field(default_factory=set)

    def pod_views(self) -> list[PodView]:
        now = time.monotonic()
        for name, (_, until) in list(self.expected_pods.items()):
            if name in self.pods or until < now:
                del self.expected_pods[name]
        return list(self.pods.values()) + [view for view, _ in self.expected_pods.values()]


class Store:
    def __init__(self) -> None:
        self.sessions: dict[Key, AgentSession] = {}
        self._versions: dict[Key, int] = {}
        self.children: dict[Key, SessionChildren] = {}
        self.activity: dict[Key, Activity] = {}

    def children_of(self, key: Key) -> SessionChildren:
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = SessionChildren()
        return found

    def put_session(self, body: dict[str, Any]) -> AgentSession | None:
        """Store a session body unless an older version than the one held."""
        session = AgentSession.model_validate(body)
        key = (session.metadata.namespace, session.metadata.name)
        version = _resource_version(body)
        if version and version < self._versions.get(key, 0):
            return None
        self._versions[key] = version
        self.sessions[key] = session
        return session

    def drop_session(self, key: Key) -> None:
        self.sessions.pop(key, None)
        self._versions.pop(key, None)
        self.activity.pop(key, None)
        children = self.children.get(key)
        if children is not None and not (children.pods or children.services):
            del self.children[key]

    def put_pod(self, key: Key, view: PodView, deleted: bool) -> None:
        children = self.children_of(key)
        pods = children.pods
        if deleted:
            pods.pop(view.name, None)
            # Fix: a pod created and deleted again before any reconcile read the store was
            # still "expected" (assumed to exist) for EXPECTATION_SECONDS: no replacement
            # for a minute. Its DELETED event settles it.
            children.expected_pods.pop(view.name, None)
        else:
            pods[view.name] = view

    def expect_pod(self, key: Key, view: PodView) -> None:
        self.children_of(key).expected_pods[view.name] = (
            view,
            time.monotonic() + EXPECTATION_SECONDS,
        )

    def mark_pod_deleting(self, key: Key, name: str) -> None:
        children = self.children_of(key)
        if name in children.pods:
            children.pods[name] = replace(children.pods[name], deleting=True)
        children.expected_pods.pop(name, None)

    def put_named_child(
        self, key: Key, kind: str, name: str, deleted: bool, live_spec: str | None = None
    ) -> None:
        children = self.children_of(key)
        if deleted or live_spec is None:
            children.live_specs.pop((kind, name), None)
        else:
            children.live_specs[(kind, name)] = live_spec
        names = {
            "Service": children.services,
            "NetworkPolicy": children.network_policies,
            "PersistentVolumeClaim": children.pvcs,
        }[kind]
        if deleted:
            names.discard(name)
        else:
            names.add(name)
