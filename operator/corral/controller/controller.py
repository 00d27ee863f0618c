"""The running operator: watch feed -> store -> work queue -> reconcile workers.

kopf delivers watch events (it lists first, then watches, and reconnects); this class
turns each into a store update and a queued session key. Workers run only while this
replica leads, and each key is reconciled by one worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from corral.api import runtime
from corral.api.activity import ActivityReport
from corral.api.v1alpha1 import GROUP, KIND, VERSION
from corral.config import OperatorConfig
from corral.controller import metrics
from corral.controller.echoes import ObjectVersion, object_version
from corral.controller.leader import LeaderElector
from corral.controller.lifecycle import Activity, Plan, wake_token
from corral.controller.pods import pod_view
from corral.controller.queue import WorkQueue
from corral.controller.reconciler import Reconciler
from corral.controller.store import Key, Store
from corral.controller.unreadable import unreadable
from corral.kube.client import ApiError, KubeClient
from corral.kube.informer import Backoff, Informer
from corral.render.meta import MANAGED_BY_LABEL, MANAGER

log = logging.getLogger("corral.controller")
CHILD_KINDS = ("Pod", "Service", "NetworkPolicy", "PersistentVolumeClaim")
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"
# On the pod of the replica holding the Lease; the operator Service selects it.
LEADER_LABEL = "corral.dev/leader"
LABEL_RETRY_MAX_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 60.0
# Reports that change what status shows (busy, turns) queue at most one reconcile, so one
# status write, per session this often; the latest report is what that write takes.
ACTIVITY_RECONCILE_SECONDS = 1.0
# What queued a reconcile, besides a watch event's change (queue.CHANGE) and a decision's
# deadline (queue.DEADLINE): `corral_reconciles_total{cause}`.
ACTIVITY = "activity"  # a runner's report
STATUS_WRITE = "status-write"  # deciding again on the status the last reconcile wrote
RETRY = "retry"  # after a failure, or a worker that was not leading yet
LEADERSHIP = "leadership"  # this replica began to lead: every session


@dataclass(frozen=True)
class RunSettings:
    workers: int = 64
    leader_election: bool = True
    lease_namespace: str = "corral-system"
    lease_name: str = "corral-operator"
    identity: str = "corral"
    lease_seconds: float = 10.0
    renew_seconds: float = 2.0
    namespaces: tuple[str, ...] = ()  # empty: all namespaces; globs allowed


def _owner_session(body: dict[str, Any]) -> str | None:
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("controller"):
            return str(owner.get("name"))
    return None


class Controller:
    def __init__(self, config: OperatorConfig, client: KubeClient, settings: RunSettings) -> None:
        self.config = config
        self.client = client
        self.settings = settings
        self.store = Store()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.reconciler = Reconciler(client, self.store, config)
        self.leading = asyncio.Event()
        # Set once the informers have listed every child kind.
        self.synced = asyncio.Event()
        self._failures: dict[Key, Backoff] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._label_wanted = asyncio.Event()
        self._labeler: asyncio.Task[None] | None = None
        # Reconciles running now: cancelled when this replica stops leading.
        self._in_flight: set[asyncio.Task[Plan | None]] = set()
        self.ready = False
        # Cleared while the sessions may hold ones deleted during a lost watch (see
        # sessions_may_be_stale): no reconcile runs until they have been listed again.
        self.sessions_current = asyncio.Event()
        self.sessions_current.set()
        self._session_lister = Informer(client, KIND, "", self.on_session, settings.namespaces)
        self._resync: asyncio.Task[None] | None = None
        metrics.register_sessions(lambda: list(self.store.sessions.values()))

    # --- watch feed (called from kopf handlers) ----------------------------------------------

    def on_session(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.store.drop_session(key)
            return
        revision = self.store.revision(key)
        try:
            session = self.store.put_session(body)
        except ValidationError as error:
            log.error("session %s/%s does not parse: %s", *key, error)
            metrics.ERRORS.labels(reason="InvalidSession").inc()
            # Its status says so (see corral.controller.unreadable).
            self.store.unreadable[key] = unreadable(body, error)
            self.queue.add(key)
            return
        if session is None:
            return
        wake = session.metadata.annotations.get(runtime.WAKE_ANNOTATION)
        observed = session.status.observed_wake
        if self.leading.is_set() and wake is not None and wake_token(wake) != observed:
            self.store.wake_seen.setdefault(key, time.monotonic())
        self._queue_if_changed(key, revision, object_version(KIND, body))

    def on_child(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        owner = _owner_session(body)
        if owner is None:
            return
        meta = body["metadata"]
        key = (str(meta.get("namespace")), owner)
        deleted = event_type == "DELETED"
        revision = self.store.revision(key)
        version = object_version(kind, body)
        if kind == "Pod":
            view = pod_view(body) if deleted else self.store.view_of_pod(key, version, body)
            self.store.put_pod(key, view, deleted)
        else:
            self.store.put_named_body(key, version, body, deleted)
        self._queue_if_changed(key, revision, version)

    def _queue_if_changed(self, key: Key, revision: int, version: ObjectVersion) -> None:
        """Queue a reconcile only for an event that changed what decisions read. The echo
        of the operator's own write (already in the store), a pod's scheduling, an
        unchanged object in a relist: each queued a reconcile that decided nothing, up to
        four per session when sessions come one at a time. A status the operator wrote is
        decided on again by the worker (see `worker`); its creates and deletes are not: the
        plan that made them decided on that picture already, and what follows them (a pod
        running, gone) comes as a change. An echo that comes before the write's answer
        changes the store; while the session's reconcile runs it is held, and queues the
        session only if the reconcile did not write it (see controller.echoes)."""
        if self.store.revision(key) != revision and not self.store.echoes.hold(key, version):
            self.queue.add(key)

    def _child_handler(self, kind: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(event_type: str, body: dict[str, Any]) -> None:
            self.on_child(kind, event_type, body)

        return handle

    async def _mark_synced(self, informers: list[Informer]) -> None:
        """Reconcile nothing until every child kind has been listed once: a session whose
        pods are not known yet would look like one whose pod was lost."""
        await asyncio.gather(*(i.synced.wait() for i in informers))
        self.synced.set()
        log.info("children listed; reconciling %d sessions", len(self.store.sessions))

    def sessions_may_be_stale(self) -> None:
        """A child watch was lost and is being listed again; the session watch (kopf's) was
        most likely lost too, and kopf's relist never reports the sessions deleted in
        between. Fix: such a session stayed in the store, and each reconcile made it a new
        pod (and Service, NetworkPolicy, volume) that the garbage collector then deleted,
        for ever. Now reconciles wait until the sessions are listed again and the ones no
        longer there are forgotten."""
        self.sessions_current.clear()
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(
                self._resync_sessions(), name="session-resync"
            )

    async def _resync_sessions(self) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    items, version = await self._session_lister.snapshot()
                    break
                except Exception as error:  # whatever it is, try again: never wedge the workers
                    retry_after = error.retry_after if isinstance(error, ApiError) else None
                    delay = backoff.next_delay(retry_after)
                    log.warning("listing sessions again failed (retry in %.1fs): %r", delay, error)
                    await asyncio.sleep(delay)
            self.apply_session_list(items, version)
        finally:
            # Reconciles go on even if taking in the list failed (logged by the task).
            self.sessions_current.set()

    def apply_session_list(self, items: list[dict[str, Any]], version: int) -> None:
        """Take in a full list of the sessions (taken at `version`): each listed one as a
        watch event, and each held one the list lacks, unless newer than the list, as
        deleted."""
        listed: dict[Key, str | None] = {}
        for item in items:
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            meta = item.get("metadata") or {}
            listed[(str(meta.get("namespace")), str(meta.get("name")))] = meta.get("uid")
            self.on_session("ADDED", item)
        for key, session in list(self.store.sessions.items()):
            if listed.get(key) == session.metadata.uid or self.store.version_of(key) > version:
                continue
            log.info(
                "session deleted while the watch was down; forgetting it",
                extra={"session_namespace": key[0], "session_name": key[1]},
            )
            self.on_session("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})

    def on_activity(self, report: ActivityReport) -> bool:
        """Keep a runner's report; False when it is not from the session's live pod."""
        key = (report.namespace, report.name)
        if key not in self.store.sessions:
            return False
        pod = self.store.children_of(key).pods.get(report.pod_name)
        if pod is None or pod.deleting:
            return False
        metrics.ACTIVITY_REPORTS.inc()
        previous = self.store.activity.get(key)
        # The operator's clock, never the report's: a report says busy or idle, not when.
        received = datetime.now(UTC)
        self.store.activity[key] = Activity(
            last_activity=received,
            busy=report.busy,
            session_id=report.session_id,
            num_turns=report.num_turns,
            total_cost_usd=report.total_cost_usd,
            sdk_version=report.sdk_version,
            cli_version=report.cli_version,
            agents=tuple(agent.to_status() for agent in report.agents),
            pod_name=report.pod_name,
            received_at=received,
            background_tasks=report.background_tasks,
            scheduled_wakeups=report.scheduled_wakeups,
            next_durable_wakeup=report.next_durable_wakeup,
        )
        if previous is None:
            self.queue.add(key, cause=ACTIVITY)  # the runner's first word: acted on at once
        elif (
            previous.busy,
            previous.num_turns,
            previous.background_tasks,
            previous.scheduled_wakeups,
            previous.next_durable_wakeup,
        ) != (
            report.busy,
            report.num_turns,
            report.background_tasks,
            report.scheduled_wakeups,
            report.next_durable_wakeup,
        ):
            self._queue_for_activity(key)
        return True

    def _queue_for_activity(self, key: Key) -> None:
        """Queue a reconcile now, or when ACTIVITY_RECONCILE_SECONDS have passed since the
        last one a report queued. A runner posts a report as each turn starts and ends (and
        an agent holding the pod's token can post its own, up to the endpoint's 5 a second):
        each was a status write. Decisions read the newest report whenever they run, so a
        deadline (an idle scale-down) is never decided on an older one."""
        now = time.monotonic()
        last = self.store.activity_queued_at.get(key)
        if last is None or now - last >= ACTIVITY_RECONCILE_SECONDS:
            self.store.activity_queued_at[key] = now
            self.queue.add(key, cause=ACTIVITY)
        elif last <= now:  # otherwise one is due at `last` already, and will take this one
            due = last + ACTIVITY_RECONCILE_SECONDS
            self.store.activity_queued_at[key] = due
            self.queue.add_after(key, due - now, ACTIVITY)

    def _activity_read(self, key: Key) -> None:
        """A reconcile reads the newest report. The queue keeps one wake-up per session, the
        earliest, so the one `_queue_for_activity` asked for may have been dropped behind a
        decision's deadline, which comes first or is replaced (`WorkQueue.set_deadline`):
        its window ends here, and a report after this reconcile is queued on its own."""
        now = time.monotonic()
        if self.store.activity_queued_at.get(key, now) > now:
            self.store.activity_queued_at[key] = now

    # --- leadership ------------------------------------------------------------------------

    def start_leading(self) -> None:
        self.store.leading_since = datetime.now(UTC)
        self.leading.set()
        self._label_own_pod(True)
        for key in list(self.store.sessions):
            self.queue.add(key, cause=LEADERSHIP)

    def stop_leading(self) -> None:
        """Stop acting at once: a deposed leader's reconciles still running would write
        beside the new leader's (a scale-down from a stale picture, a second pod)."""
        self.leading.clear()
        self.store.leading_since = None
        for task in list(self._in_flight):
            task.cancel()
        self._label_own_pod(False)

    def _label_own_pod(self, leading: bool) -> None:
        """Mark this replica's pod as the leader, so the operator Service (which selects the
        label) sends runners' activity reports to the replica that acts on them. One task
        brings the label to the leadership of the moment, in order and until it holds: a
        patch of each change on its own could land out of order (a slow `leader=None` after
        the `true` of a leadership regained) or fail once and leave the leader unlabelled,
        its reports lost, for as long as it leads."""
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not (name and namespace):
            return
        self._label_wanted.set()
        if self._labeler is None or self._labeler.done():
            self._labeler = asyncio.get_running_loop().create_task(
                self._keep_label(namespace, name)
            )
            self._background.add(self._labeler)
            self._labeler.add_done_callback(self._background.discard)

    async def _keep_label(self, namespace: str, name: str) -> None:
        labelled: bool | None = None
        pause = 1.0
        while True:
            await self._label_wanted.wait()
            self._label_wanted.clear()
            leading = self.leading.is_set()
            if leading == labelled:
                continue
            patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
            try:
                await self.client.patch("Pod", namespace, name, patch)
            except (ApiError, OSError, aiohttp.ClientError, TimeoutError) as error:
                log.warning(
                    "could not label pod %s/%s as leader=%s (trying again in %g s): %r",
                    namespace, name, leading, pause, error,
                )  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(pause * 2, LABEL_RETRY_MAX_SECONDS)
                self._label_wanted.set()
                continue
            labelled, pause = leading, 1.0

    # --- workers ---------------------------------------------------------------------------

    async def worker(self) -> None:
        await self.synced.wait()
        while True:
            await self.leading.wait()
            key = await self.queue.get()
            cause = self.queue.cause_of(key)
            queued = self.queue.enqueued_at.get(key)
            if queued is not None:
                metrics.QUEUE_LAG_SECONDS.observe(time.monotonic() - queued)
            try:
                await self.sessions_current.wait()
                if not self.leading.is_set():
                    self.queue.add_after(key, 1.0, RETRY)
                    continue
                version = self.store.version_of(key)
                self._activity_read(key)
                plan: Plan | None = None
                self.store.echoes.begin(key)
                try:
                    plan = await self._reconcile_while_leading(key)
                finally:
                    if self.store.echoes.end(key, planned=plan is not None):
                        self.queue.add(key)  # news heard meanwhile
                self._failures.pop(key, None)
                acted = plan is not None and not plan.empty
                metrics.RECONCILES.labels(cause, "acted" if acted else "nothing").inc()
                wrote_only_status = plan is not None and plan.only_status
                if self.store.version_of(key) != version and not wrote_only_status:
                    # Decide on the status this reconcile wrote beside children it created or
                    # deleted (the store holds them before their watch events, which queue
                    # nothing), as the status write's echo did. A plan that wrote only the
                    # status is its own fixed point: that reconcile decided nothing (about
                    # one per session).
                    self.queue.add(key, cause=STATUS_WRITE)
                if plan is not None:
                    self.queue.set_deadline(key, plan.requeue_after)
            except ApiError as error:
                metrics.RECONCILES.labels(cause, "failed").inc()
                if error.namespace_gone:
                    # Its namespace is being deleted: the session goes with it, no retry.
                    self._failures.pop(key, None)
                    continue
                self._retry(key, error)
            except Exception as error:
                metrics.RECONCILES.labels(cause, "failed").inc()
                self._retry(key, error)
            finally:
                self.queue.done(key)

    async def _reconcile_while_leading(self, key: Key) -> Plan | None:
        """Reconcile `key`, unless leadership is lost first (see stop_leading): then the
        reconcile is cancelled and None returned; the next leader reconciles everything."""
        task = asyncio.create_task(self.reconciler.reconcile(key))
        self._in_flight.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker itself is being cancelled (shutdown)
            log.info(
                "reconcile cancelled: no longer the leader",
                extra={"session_namespace": key[0], "session_name": key[1]},
            )
            return None
        finally:
            self._in_flight.discard(task)

    def _retry(self, key: Key, error: Exception) -> None:
        """Try the session again later, backing off exponentially up to a minute, with
        jitter (sessions that failed together under a 429 do not retry in lockstep) and
        never sooner than the API server's Retry-After."""
        backoff = self._failures.setdefault(key, Backoff(base=1.0, cap=MAX_BACKOFF_SECONDS))
        delay = backoff.next_delay(error.retry_after if isinstance(error, ApiError) else None)
        failures = backoff.failures
        metrics.ERRORS.labels(reason=type(error).__name__).inc()
        log.warning(
            "reconcile failed (attempt %d, retry in %.1fs): %s",
            failures,
            delay,
            error,
            extra={"session_namespace": key[0], "session_name": key[1]},
        )
        self.queue.add_after(key, delay, RETRY)

    async def run(self) -> None:
        """Everything but the watches: delay heap, workers, leader election."""
        if self.settings.leader_election:
            self._label_own_pod(False)  # a restarted replica starts as a standby
        informers = [
            Informer(
                self.client,
                kind,
                CHILD_SELECTOR,
                self._child_handler(kind),
                self.settings.namespaces,
                on_relist=self.sessions_may_be_stale,
            )
            for kind in CHILD_KINDS
        ]
        tasks = [asyncio.create_task(self.queue.run_delays(), name="delays")]
        tasks += [asyncio.create_task(i.run(), name=f"informer-{i.kind}") for i in informers]
        tasks.append(asyncio.create_task(self._mark_synced(informers), name="synced"))
        tasks += [
            asyncio.create_task(self.worker(), name=f"worker-{i}")
            for i in range(self.settings.workers)
        ]
        if self.settings.leader_election:
            elector = LeaderElector(
                self.client,
                self.settings.lease_namespace,
                self.settings.lease_name,
                self.settings.identity,
                on_started=self.start_leading,
                on_stopped=self.stop_leading,
                lease_seconds=self.settings.lease_seconds,
                renew_seconds=self.settings.renew_seconds,
            )
            tasks.append(asyncio.create_task(elector.run(), name="leader"))
        else:
            metrics.LEADER.set(1)
            self.start_leading()
        self.ready = True
        try:
            await asyncio.gather(*tasks)
        finally:
            if self._resync is not None:
                tasks.append(self._resync)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
