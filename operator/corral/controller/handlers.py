"""kopf handlers: thin adapters from watch events to the Controller.

Index handlers (`@kopf.index`) see every listed and changed object, and kopf runs no other
handler until all of them have seen the initial listing; so the store is complete before
the first reconcile, and a running session is never mistaken for one whose pod is lost.
They return None: kopf keeps nothing, the Controller's store holds what it needs.
Deletions arrive through `@kopf.on.event`, which indexes do not see.
"""

from __future__ import annotations

from typing import Any

import kopf

from corral.api.v1alpha1 import GROUP, PLURAL, VERSION
from corral.controller.controller import Controller
from corral.render.meta import MANAGED_BY_LABEL, MANAGER

CHILD_LABELS = {MANAGED_BY_LABEL: MANAGER}
CHILD_KINDS = {
    "Pod": ("v1", "pods"),
    "Service": ("v1", "services"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
}


def _controller(memo: Any) -> Controller:
    controller: Controller = memo.controller
    return controller


@kopf.index(GROUP, VERSION, PLURAL)
def session_seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).on_session(None, dict(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
def session_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller = _controller(memo)
    controller.synced.set()
    if event["type"] == "DELETED":
        controller.on_session("DELETED", dict(event["object"]))


def _register_child(kind: str, api_version: str, plural: str) -> None:
    group, _, version = api_version.rpartition("/")

    def child_seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _controller(memo).on_child(kind, None, dict(body))

    def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        controller = _controller(memo)
        controller.synced.set()
        if event["type"] == "DELETED":
            controller.on_child(kind, "DELETED", dict(event["object"]))

    child_seen.__name__ = f"{kind.lower()}_seen"
    child_event.__name__ = f"{kind.lower()}_event"
    kopf.index(group, version, plural, labels=CHILD_LABELS, id=child_seen.__name__)(child_seen)
    kopf.on.event(group, version, plural, labels=CHILD_LABELS, id=child_event.__name__)(child_event)


for _kind, (_api_version, _plural) in CHILD_KINDS.items():
    _register_child(_kind, _api_version, _plural)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Level-based, event-driven handlers only: no finalizers, no diff-base annotation,
    # no progress annotations, no per-handler Events. Each costs API writes per session.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = "corral.dev/unused-finalizer"
