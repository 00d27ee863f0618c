"""Applies lifecycle plans: the only place the operator writes to the API server.

Order matters for crash safety: children are created first, then the status is written,
then pods are deleted. A crash between any two steps leaves a state the next reconcile
(from a fresh list) repairs without duplicating a pod or losing an outcome.

One failed write does not stop the steps that do not depend on it (a NetworkPolicy patch
refused with 403 must not hold back a pod deletion, an Event or a TTL deletion): see
Reconciler.apply for what waits for what.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from corral.api.v1alpha1 import AgentSession, Condition, ObjectMeta
from corral.config import OperatorConfig
from corral.controller import metrics
from corral.controller.credentials import SecretCheck, secret_check
from corral.controller.echoes import object_version
from corral.controller.lifecycle import (
    EventNote,
    Observed,
    Plan,
    decide,
    timestamp,
)
from corral.controller.ownership import name_taken_message, owned_by
from corral.controller.pods import pod_view
from corral.controller.store import Key, Store
from corral.controller.unreadable import Unreadable, status_patch
from corral.kube.client import METADATA_ONLY, ApiError, KubeClient
from corral.kube.events import OPERATOR_COMPONENT, EventPoster, EventTarget, event_manifest
from corral.render import network_policy_name, pvc_name, service_name

log = logging.getLogger("corral.reconciler")
# How long a new session's first "Pending" status may wait for its pod to start.
STATUS_DEFER_SECONDS = 2.0


class Reconciler:
    def __init__(self, client: KubeClient, store: Store, config: OperatorConfig) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.events = EventPoster(client)
        # Kept in the store, beside the session, so they go with it.
        self.wake_seen = store.wake_seen
        self.deferred_since = store.deferred_since
        self.name_conflicts = store.name_conflicts

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
            has_pvc=pvc_name(session) in children.pvcs,
            volume_node=children.volume_nodes.get(pvc_name(session)),
            now=now or datetime.now(UTC),
            activity=self.store.activity.get(key),
            leading_since=self.store.leading_since,
            live_specs={
                kind: spec
                for kind, name in (
                    ("Service", service_name(session)),
                    ("NetworkPolicy", network_policy_name(session)),
                )
                if (spec := children.live_specs.get((kind, name))) is not None
            },
            name_conflicts=self._conflicts(key),
        )

    def _conflicts(self, key: Key) -> tuple[str, ...]:
        return tuple(sorted((self.name_conflicts.get(key) or {}).values()))

    async def reconcile(self, key: Key) -> Plan | None:
        refused = self.store.unreadable.get(key)
        if refused is not None:
            await self._report_unreadable(key, refused)
            return None
        observed = self.observe(key)
        if observed is None:
            return None
        started = time.perf_counter()
        plan = decide(observed, self.config)
        # Each lookup a plan asks for is made once, and the session decided again with it.
        if plan.confirm_gone:
            observed = await self._confirm_gone(key, observed, plan.confirm_gone)
            plan = decide(observed, self.config)
        if plan.check_credentials:
            check = await self._check_secret(key[0], plan.check_credentials)
            plan = decide(replace(observed, secret_check=check), self.config)
        await self.apply(key, observed.session, plan)
        if self._conflicts(key) != observed.name_conflicts:
            plan.requeue(0.0)  # decide again, knowing which names are (no longer) taken
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return plan

    async def _confirm_gone(self, key: Key, observed: Observed, name: str) -> Observed:
        """Look up a pod the status names and the store lacks. Found and ours: the store
        expects it (as after our own create) until its watch event comes, and nothing
        replaces it. Not found (or not this session's): it is gone for sure."""
        try:
            body = await self.client.get("Pod", key[0], name)
        except ApiError as error:
            if error.status != 404:
                raise
            body = None
        uid = observed.session.metadata.uid
        if body is not None and owned_by(body, uid):
            metrics.ERRORS.labels(reason="PodMissingFromWatch").inc()
            log.warning(
                "pod %s exists but the pod watch has not shown it; not replacing it",
                name,
                extra=_ctx(key),
            )
            self.store.expect_pod(key, pod_view(body))
            found = self.observe(key, observed.now)
            if found is not None:
                return found
        return replace(observed, pod_gone=name)

    async def _check_secret(self, namespace: str, name: str) -> SecretCheck:
        """Whether the credentials Secret exists and is labelled; a metadata-only GET, so
        the key itself never reaches the operator."""
        try:
            metadata = await self.client.request(
                "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", accept=METADATA_ONLY
            )
        except ApiError as error:
            if error.status == 404:
                return secret_check(None)
            raise
        return secret_check(metadata)

    async def apply(self, key: Key, session: AgentSession, plan: Plan) -> None:
        """Carry out a plan. Only real dependencies hold a step back:

        - the status names the pod the plan creates: not written if that create failed;
        - pod and child deletions and the plan's Events wait for the status (a finished pod
          is deleted only once its outcome is recorded; Events describe the status
          transition, and are decided again, not lost, when the status is retried);
        - everything else is independent: Service, NetworkPolicy and PVC creates, pod and
          child patches, the TTL deletion, and each pod deletion from the others.

        Every failure is counted; the first is raised at the end, so the worker retries the
        session with backoff while the independent steps have already been made.

        A pod waits for its own Service, NetworkPolicy and volume: it is made only once they
        exist, and a name of theirs taken by someone else's object drops the plan.
        """
        failures: list[Exception] = []
        children_ready = await self._create_children_before_pod(key, session, plan, failures)
        if children_ready is None:
            return
        status_ok = children_ready
        if plan.create:
            results = await asyncio.gather(
                *(self._create(key, session, m) for m in plan.create), return_exceptions=True
            )
            for manifest, result in zip(plan.create, results, strict=True):
                if isinstance(result, BaseException):
                    failures.append(_reraise_fatal(result))
                    status_ok = status_ok and manifest["kind"] != "Pod"
        if status_ok and plan.status_patch and not self._defer_status(key, plan):
            status_ok = await self._attempt(
                self._patch_status(key, session, plan.status_patch), failures
            )
        for name, patch in plan.patch_pods:
            await self._attempt(self._patch_child(key, session, "Pod", name, patch), failures)
        for name, patch in plan.resize_pods:
            if (key, name) in self.store.resize_refused:
                continue
            await self._attempt(self._resize_pod(key, name, patch), failures)
        for kind, name, patch in plan.patch_children:
            await self._attempt(self._patch_child(key, session, kind, name, patch), failures)
        if status_ok:
            # With the status, like pod deletions: the Event that says what a TTL deleted
            # is decided with the deletion, and both are retried together.
            for kind, name in plan.delete_children:
                if await self._attempt(self.client.delete(kind, key[0], name), failures):
                    self.store.put_named_child(key, kind, name, deleted=True)
            for deletion in plan.delete_pods:
                uid = deletion.uid or None
                try:
                    present = await self.client.delete("Pod", key[0], deletion.name, uid=uid)
                except Exception as error:
                    failures.append(error)
                    continue
                if present:
                    self.store.mark_pod_deleting(key, deletion.name)
                else:  # already gone (a 404 means deleted): its DELETED event may never come
                    self.store.forget_pod(key, deletion.name, uid)
            if plan.scaled_down:
                metrics.SCALE_DOWNS.inc()
            if plan.woke:
                metrics.WAKES.inc()
            for note in plan.events:
                await self._event(session, note)
        if plan.delete_session and await self._attempt(
            self.client.delete("AgentSession", key[0], key[1], uid=session.metadata.uid or None),
            failures,
        ):
            log.info("deleted finished session after its TTL", extra=_ctx(key))
        if failures:
            if len(failures) > 1:
                log.warning(
                    "%d writes of one reconcile failed; retrying: %s",
                    len(failures),
                    "; ".join(str(f) for f in failures),
                    extra=_ctx(key),
                )
            raise failures[0]

    async def _attempt(self, call: Awaitable[Any], failures: list[Exception]) -> bool:
        """Await one write; a failure is recorded for later instead of ending the plan."""
        try:
            await call
        except Exception as error:
            failures.append(error)
            return False
        return True

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

    async def _create_children_before_pod(
        self, key: Key, session: AgentSession, plan: Plan, failures: list[Exception]
    ) -> bool | None:
        """When the plan starts a pod, make its Service, NetworkPolicy and volume first: a
        pod never runs without its own. True: go on; False: one of them failed, so no pod
        (nor the status that would name it); None: one of their names is taken by an object
        that is not ours, so the plan is dropped and decided again."""
        pods = [m for m in plan.create if m["kind"] == "Pod"]
        others = [m for m in plan.create if m["kind"] != "Pod"]
        if not (pods and others):
            return True
        results = await asyncio.gather(
            *(self._create(key, session, m) for m in others), return_exceptions=True
        )
        plan.create = pods
        failed = [_reraise_fatal(r) for r in results if isinstance(r, BaseException)]
        if failed:
            failures.extend(failed)
            plan.create = []
            return False
        taken = self.name_conflicts.get(key) or {}
        if any(f"{m['kind']}/{m['metadata']['name']}" in taken for m in others):
            plan.requeue(0.0)
            return None
        return True

    async def _create(self, key: Key, session: AgentSession, manifest: dict[str, Any]) -> None:
        kind = manifest["kind"]
        try:
            created = await self.client.create(manifest)
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                # Made by an earlier reconcile whose watch event is still on its way (or
                # whose answer was lost: a timeout, a reconcile cancelled with leadership),
                # or by someone else: only the first counts as created. Counted, so a test
                # that sees more creates than children can tell a repeat from a duplicate.
                metrics.ERRORS.labels(reason=f"Create{kind}AlreadyExists").inc()
                await self._check_owner(key, session, manifest)
                return
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
        version = object_version(kind, created)
        self.store.echoes.written(key, version)
        if kind == "Pod":
            self.store.expect_pod(key, self.store.view_of_pod(key, version, created))
            seen = self.wake_seen.pop(key, None)
            if seen is not None:
                metrics.WAKE_LATENCY.observe(time.monotonic() - seen)
        else:
            self._name_free(key, kind, version[1])
            self.store.put_named_body(key, version, created)

    async def _check_owner(self, key: Key, session: AgentSession, manifest: dict[str, Any]) -> None:
        """After 409 AlreadyExists: record the child as ours, or its name as taken."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "Pod":
            return  # pod names carry a hash of the session's UID: ours, or an earlier attempt
        try:
            existing = await self.client.get(kind, key[0], name)
        except ApiError as error:
            if error.status == 404:
                return  # gone again since: the next reconcile creates it
            raise
        if owned_by(existing, session.metadata.uid):
            self._name_free(key, kind, name)
            self.store.put_named_body(key, object_version(kind, existing), existing)
            return
        metrics.ERRORS.labels(reason=f"Create{kind}NameTaken").inc()
        self.name_conflicts.setdefault(key, {})[f"{kind}/{name}"] = name_taken_message(
            kind, name, existing
        )

    def _name_free(self, key: Key, kind: str, name: str) -> None:
        taken = self.name_conflicts.get(key)
        if taken is not None:
            taken.pop(f"{kind}/{name}", None)
            if not taken:
                del self.name_conflicts[key]

    async def _patch_status(self, key: Key, session: AgentSession, patch: dict[str, Any]) -> None:
        try:
            updated = await self.client.patch(
                "AgentSession", key[0], key[1], {"status": patch}, sub="status"
            )
        except ApiError as error:
            if error.status == 404:
                # The session is gone, though no watch said so: forget it, or it would be
                # given new children on every reconcile (see Controller.sessions_may_be_stale).
                held = self.store.sessions.get(key)
                if held is not None and held.metadata.uid == session.metadata.uid:
                    self.store.drop_session(key)
                return
            raise
        # Keep our own write: the next reconcile may run before the watch shows it.
        self.store.echoes.written(key, object_version("AgentSession", updated))
        self.store.put_session(updated)

    async def _report_unreadable(self, key: Key, session: Unreadable) -> None:
        """Say in its status (and one Warning Event per generation) why a stored session
        cannot be read; nothing else is done for it until it can."""
        if session.reported:
            return
        patch = status_patch(session, timestamp(datetime.now(UTC)))
        try:
            await self.client.patch("AgentSession", key[0], key[1], {"status": patch}, sub="status")
        except ApiError as error:
            if error.status == 404:
                return
            raise
        if self.store.unreadable.get(key) is session:
            # Said: a reconcile before the watch shows the write must not say it again.
            written = tuple(Condition.model_validate(c) for c in patch["conditions"])
            self.store.unreadable[key] = replace(session, conditions=written)
        meta = ObjectMeta(name=session.name, namespace=session.namespace, uid=session.uid)
        await self._post_event(meta, EventNote("Warning", "SpecUnreadable", session.message))

    async def _patch_child(
        self, key: Key, session: AgentSession, kind: str, name: str, patch: dict[str, Any]
    ) -> None:
        """Patch a child in place; gone (404) is fine, anything else is reported and raised."""
        try:
            await self.client.patch(kind, key[0], name, patch)
        except ApiError as error:
            if error.status == 404:
                return
            if not error.namespace_gone:
                metrics.ERRORS.labels(reason=f"Patch{kind}{error.reason}").inc()
                await self._event(
                    session,
                    EventNote("Warning", f"Patch{kind}Failed", f"{kind} {name}: {error.message}"),
                )
            raise

    async def _resize_pod(self, key: Key, name: str, patch: dict[str, Any]) -> None:
        """End a pod's start-up CPU boost (render.cpu_boost). The pod as patched replaces
        the stored view, so a reconcile before the watch shows it does not send it again.
        A refusal (an API server without in-place resize, a chart without pods/resize) is
        logged, not retried: the pod keeps its boost and its request."""
        try:
            resized = await self.client.patch(
                "Pod", key[0], name, patch, sub="resize", strategic=True
            )
        except ApiError as error:
            if error.status in (404, 409):
                return  # gone, or changed meanwhile: the next reconcile decides again
            if error.status >= 500 or error.status == 429:
                raise
            if error.status == 422:
                # The pod's node cannot resize (KWOK's, a kubelet before 1.33, resize off):
                # a fact of the cluster, not a fault of the install, so no error counted.
                log.info(
                    "pod %s keeps its start-up CPU limit: its node cannot resize pods in place",
                    name,
                    extra=_ctx(key),
                )
            else:  # e.g. 403, a chart without pods/resize
                metrics.ERRORS.labels(reason=f"ResizePod{error.reason}").inc()
                log.warning(
                    "could not lower pod %s's start-up CPU limit: %s", name, error, extra=_ctx(key)
                )
            self.store.resize_refused.add((key, name))
            return
        metrics.POD_RESIZES.inc()
        self.store.echoes.written(key, object_version("Pod", resized))
        self.store.update_pod(key, pod_view(resized))
        log.debug("pod %s: start-up CPU boost ended", name, extra=_ctx(key))

    async def _event(self, session: AgentSession, note: EventNote) -> None:
        """Post a core/v1 Event on the session; never fails a reconcile (corral.kube.events)."""
        await self._post_event(session.metadata, note)

    async def _post_event(self, meta: ObjectMeta, note: EventNote) -> None:
        target = EventTarget(meta.namespace, meta.name, meta.uid)
        warning = note.type == "Warning"
        await self.events.post(
            event_manifest(target, note.reason, note.message, OPERATOR_COMPONENT, warning)
        )
        level = logging.WARNING if warning else logging.INFO
        log.log(level, "%s: %s", note.reason, note.message, extra=_ctx((meta.namespace, meta.name)))


def _reraise_fatal(result: BaseException) -> Exception:
    """A failed create, as an Exception to retry; cancellation and exits go on at once."""
    if not isinstance(result, Exception):
        raise result
    return result


def _ctx(key: Key) -> dict[str, str]:
    return {"session_namespace": key[0], "session_name": key[1]}
