"""Telling the echo of a reconcile's own write from news when the watch shows it first.

A write is answered on one connection and shown by a watch on another, in either order.
When the answer comes first, the store holds the object already and its watch event changes
nothing: no reconcile. When the event comes first, the store took it as a change, and the
session was reconciled again to decide nothing new: nearly once per session when sessions
come one at a time (the Service's, NetworkPolicy's or pod's ADDED before the create's answer;
the session's MODIFIED before the status patch's answer).

So while a session is being reconciled, the events that change its picture are held, not
queued; when the reconcile ends, they queue it again unless each is one of its own writes:
the same object at the resourceVersion a write's answer carried (one version of one object,
whichever connection brings it). A reconcile that did not end with a plan (it failed, or
lost leadership) trusts none of them.
"""

from __future__ import annotations

from typing import Any

Key = tuple[str, str]  # (namespace, session name)
# One version of one object: (kind, name, resourceVersion).
ObjectVersion = tuple[str, str, str]


def object_version(kind: str, body: dict[str, Any]) -> ObjectVersion:
    meta = body.get("metadata") or {}
    return (kind, str(meta.get("name")), str(meta.get("resourceVersion") or ""))


class Echoes:
    def __init__(self) -> None:
        self._heard: dict[Key, list[ObjectVersion]] = {}
        self._written: dict[Key, set[ObjectVersion]] = {}

    def begin(self, key: Key) -> None:
        """A reconcile of `key` starts: hold what changes it until `end`."""
        self._heard[key] = []
        self._written[key] = set()

    def hold(self, key: Key, version: ObjectVersion) -> bool:
        """An event changed `key`'s picture: True if held for the reconcile running now
        (else the caller queues it)."""
        heard = self._heard.get(key)
        if heard is None:
            return False
        heard.append(version)
        return True

    def written(self, key: Key, version: ObjectVersion) -> None:
        """The version a write of this reconcile answered with (none is running: nothing
        to tell)."""
        written = self._written.get(key)
        if written is not None:
            written.add(version)

    def end(self, key: Key, planned: bool) -> bool:
        """The reconcile ended: whether anything held is news (not its own write, or the
        reconcile did not end with a plan)."""
        heard = self._heard.pop(key, [])
        written = self._written.pop(key, set())
        if not planned:
            return bool(heard)
        return any(version[2] == "" or version not in written for version in heard)
