"""kopf handlers: thin adapters from AgentSession watch events to the Controller.

kopf watches the sessions; the children (pods, Services, NetworkPolicies, PVCs) are watched
by the Controller's own informers with a server-side label selector (see
corral.kube.informer), which spares the operator every other pod in the cluster.
Only `@kopf.on.event` is used: no finalizers, no diff-base or progress annotations.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import kopf

from corral.api.v1alpha1 import GROUP, PLURAL, VERSION
from corral.controller.controller import Controller
from corral.kube.informer import is_pattern


def kopf_scope(namespaces: Sequence[str]) -> tuple[bool, list[str]]:
    """kopf's (clusterwide, namespaces) for the operator's --namespace values.

    kopf resolves a glob by listing and watching namespaces, a right the chart grants only
    with watchNamespaces (exact names); so with any glob kopf watches every namespace, as
    the child informers do, and session_event keeps the sessions of matching ones.
    """
    if not namespaces or any(is_pattern(n) for n in namespaces):
        return True, []
    return False, list(namespaces)


def watched(namespace: str, namespaces: Sequence[str]) -> bool:
    """Whether a namespace is one the operator manages (names or globs; none: all)."""
    return not namespaces or any(fnmatch.fnmatchcase(namespace, n) for n in namespaces)


# Async on purpose: kopf runs a plain `def` handler in a thread pool, and the Controller
# (store, work queue, asyncio.Event) belongs to the event loop. Fix: it was a `def`, and
# under a burst of session events the loop and a handler thread touched the queue's Event at
# once ("deque mutated during iteration", found by tests/chaos/test_chaos_bad_input.py).
@kopf.on.event(GROUP, VERSION, PLURAL)
async def session_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    body: dict[str, Any] = dict(event["object"])
    metadata: dict[str, Any] = body.get("metadata") or {}
    namespace = str(metadata.get("namespace"))
    if watched(namespace, controller.settings.namespaces):
        controller.on_session(event["type"], body)


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf keeps one for change handlers (`on.create`, `on.update`, ...),
    which Corral does not register, yet builds it on every event all the same, a deep copy of
    the session's whole body and a second one to clean it, and diffs the two for nobody."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Level-based, event-driven handlers only: each of kopf's per-object annotations,
    # finalizers and handler Events would cost API writes per session.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
