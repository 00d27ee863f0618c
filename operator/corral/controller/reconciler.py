"""Applies lifecycle plans: the only place the operator writes to the API server.

Order matters for crash safety: children are created first, then the status is written,
then pods are deleted. A crash between any two steps leaves a state the next reconcile
(from a fresh list) repairs without duplicating a pod or losing an outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller import metrics
from corral.controller.lifecycle import (
    SPEC_HASH_ANNOTATION,
    EventNote,
    Observed,
    Plan,
    decide,
    timestamp,
)
from corral.controller.pods import pod_view
from corral.controller.store import Key, Store
from corral.kube.client import ApiError, KubeClient
from corral.render import network_policy_name, pvc_name, service_name

log = logging.getLogger("corral.reconciler")
# Who posts the operator's Events (source.component and reportingComponent alike).
EVENT_COMPONENT = "corral.dev/operator"
# How long a new session's first "Pending" status may wait for its pod to start.
STATUS_DEFER_SECONDS = 2.0


class Reconciler:
    def __init__(self, client: KubeClient, store: Store, config: OperatorConfig) -> None:
        self.client = client
        self.store = store
        self.config = config
        # When a wake was first seen per session, for the wake-latency metric.
        self.wake_seen: dict[Key, float] = {}
        self.deferred_since: dict[Key, float] = {}

    def observe(self, key: Key, now: datetime | None = None) -> Observed | None:
        session = self.store.sessions.get(key)
        if session is None:
            return None
        children = self.store.children_of(key)
        return Observed(
            session=session,
            pods=children.pod_views(),
            has_service=service_name(session) in children.services,
            has_network_policy=network_policy_name(session) in children.network_policies,
            network_policy_hash=children.policy_hashes.get(network_policy_name(session)),
            has_pvc=pvc_name(session) in children.pvcs,
            now=now or datetime.now(UTC),
            activity=self.store.activity.get(key),
        )

    async def reconcile(self, key: Key) -> Plan | None:
        observed = self.observe(key)
        if observed is None:
            return None
        started = time.perf_counter()
        plan = decide(observed, self.config)
        if plan.check_credentials:
            found = await self._secret_exists(key[0], plan.check_credentials)
            plan = decide(replace(observed, credentials_found=found), self.config)
        await self.apply(key, observed.session, plan)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return plan

    async def _secret_exists(self, namespace: str, name: str) -> bool:
        try:
            await self.client.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def apply(self, key: Key, session: AgentSession, plan: Plan) -> None:
        if plan.create:
            await asyncio.gather(*(self._create(key, session, m) for m in plan.create))
        if plan.status_patch and not self._defer_status(key, plan):
            await self._patch_status(key, session, plan.status_patch)
        for name, patch in plan.patch_pods:
            await self._ignore_missing(self.client.patch("Pod", key[0], name, patch))
        for kind, name, patch in plan.patch_children:
            await self._ignore_missing(self.client.patch(kind, key[0], name, patch))
        for deletion in plan.delete_pods:
            grace = None
            await self.client.delete(
                "Pod", key[0], deletion.name, uid=deletion.uid or None, grace_seconds=grace
            )
            self.store.mark_pod_deleting(key, deletion.name)
        for kind, name in plan.delete_children:
            await self.client.delete(kind, key[0], name)
            self.store.put_named_child(key, kind, name, deleted=True)
        if plan.scaled_down:
            metrics.SCALE_DOWNS.inc()
        if plan.woke:
            metrics.WAKES.inc()
        for note in plan.events:
            await self._event(session, note)
        if plan.delete_session:
            await self.client.delete(
                "AgentSession", key[0], key[1], uid=session.metadata.uid or None
            )
            log.info("deleted finished session after its TTL", extra=_ctx(key))

    def _defer_status(self, key: Key, plan: Plan) -> bool:
        """Hold back a "starting" status for up to STATUS_DEFER_SECONDS after the session's
        first reconcile; the reconcile that follows (pod events, or the requeue) writes it."""
        if not plan.status_deferrable:
            self.deferred_since.pop(key, None)
            return False
        first = self.deferred_since.setdefault(key, time.monotonic())
        remaining = STATUS_DEFER_SECONDS - (time.monotonic() - first)
        if remaining <= 0:
            self.deferred_since.pop(key, None)
            return False
        plan.requeue(remaining)
        return True

    async def _create(self, key: Key, session: AgentSession, manifest: dict[str, Any]) -> None:
        kind = manifest["kind"]
        try:
            created = await self.client.create(manifest)
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return  # made by an earlier reconcile whose watch event is still on its way
            if error.namespace_gone or "error looking up service account" in error.message:
                # Gone for good, or a namespace so new that its default ServiceAccount is not
                # there yet: retried without a Warning Event.
                raise
            metrics.ERRORS.labels(reason=f"Create{kind}{error.reason}").inc()
            await self._event(
                session,
                EventNote(
                    "Warning",
                    f"Create{kind}Failed",
                    f"{kind} {manifest['metadata']['name']}: {error.message}",
                ),
            )
            raise
        name = manifest["metadata"]["name"]
        if kind == "Pod":
            self.store.expect_pod(key, pod_view(created))
            seen = self.wake_seen.pop(key, None)
            if seen is not None:
                metrics.WAKE_LATENCY.observe(time.monotonic() - seen)
        else:
            spec_hash = (manifest["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
            self.store.put_named_child(key, kind, name, deleted=False, spec_hash=spec_hash)

    async def _patch_status(self, key: Key, session: AgentSession, patch: dict[str, Any]) -> None:
        try:
            updated = await self.client.patch(
                "AgentSession", key[0], key[1], {"status": patch}, sub="status"
            )
        except ApiError as error:
            if error.status == 404:
                return
            raise
        # Keep our own write: the next reconcile may run before the watch shows it.
        self.store.put_session(updated)

    async def _ignore_missing(self, call: Any) -> None:
        try:
            await call
        except ApiError as error:
            if error.status != 404:
                raise

    async def _event(self, session: AgentSession, note: EventNote) -> None:
        """Post a core/v1 Event on the session; best effort, never fails a reconcile."""
        now = timestamp(datetime.now(UTC))
        meta = session.metadata
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": session.api_version,
                "kind": session.kind,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
            },
            "reason": note.reason,
            "message": note.message[:1024],
            "type": note.type,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            # One name for both: `kubectl get events` shows the one, events.k8s.io the other.
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
        }
        try:
            await self.client.create(event)
        except ApiError as error:
            log.warning(
                "could not post event %s: %s",
                note.reason,
                error,
                extra=_ctx((meta.namespace, meta.name)),
            )
        level = logging.WARNING if note.type == "Warning" else logging.INFO
        log.log(level, "%s: %s", note.reason, note.message, extra=_ctx((meta.namespace, meta.name)))


def _ctx(key: Key) -> dict[str, str]:
    return {"session_namespace": key[0], "session_name": key[1]}
