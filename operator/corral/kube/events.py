"""Kubernetes Events on AgentSessions: one manifest for every component, and a poster that
never fails its caller and does not give up on the first transient error.

The first attempt is made inline, so an Event is there when the write it describes is (a
reader who sees the status can list its Event). An attempt refused for a reason that may
pass (429, 5xx, a connection reset or timeout: an API server restarting or overloaded) is
tried again in the background a few times with growing pauses, as client-go's recorder does;
anything else (403, 422) is logged and dropped. Each Event is named before its first
attempt, so one that reached the API server although its answer was lost is not made twice
by the next attempt (409 counts as done). The background work is bounded: a backlog
past MAX_PENDING is dropped and counted, so an API server that is down for long costs a
fixed amount of memory. Every drop is counted in corral_events_dropped_total and logged
with the Event's reason (the message is in the log line the caller already wrote).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter

from corral.kube.client import CONNECTION_ERRORS, JSON, RESOURCES, ApiError, KubeClient

log = logging.getLogger("corral.events")

# Pauses before the background attempts after a transient failure (client-go's recorder
# tries 12 times 10 s apart; a session's Event is worth less than a minute of retries).
RETRY_PAUSES_SECONDS: tuple[float, ...] = (1.0, 4.0, 16.0)
# Events waiting for a background attempt, at most; more are dropped.
MAX_PENDING = 256
MESSAGE_LIMIT = 1024
# The `source.component` (and reporting controller) of each component's Events.
OPERATOR_COMPONENT = "corral.dev/operator"
GATEWAY_COMPONENT = "corral-gateway"

EVENTS_DROPPED = Counter(
    "corral_events_dropped_total",
    "Kubernetes Events given up on, by why: refused (4xx), retries (still failing after "
    "every attempt), backlog (too many waiting).",
    ["why"],
)


@dataclass(frozen=True)
class EventTarget:
    """The AgentSession an Event is about."""

    namespace: str
    name: str
    uid: str | None
    kind: str = "AgentSession"

    @property
    def api_version(self) -> str:
        return RESOURCES[self.kind][0]


def event_manifest(
    target: EventTarget,
    reason: str,
    message: str,
    component: str,
    warning: bool = False,
    action: str | None = None,
    now: datetime | None = None,
) -> JSON:
    """A core/v1 Event (what `kubectl describe` and `kubectl get events` show)."""
    moment = now or datetime.now(UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest: JSON = {
        "apiVersion": "v1",
        "kind": "Event",
        # Named here, not by the server (generateName): an attempt made again after its
        # answer was lost finds its Event there (409) instead of making a second one.
        "metadata": {
            "name": f"{target.name[:200]}.{uuid.uuid4().hex[:16]}",
            "namespace": target.namespace,
        },
        "involvedObject": {
            "apiVersion": target.api_version,
            "kind": target.kind,
            "name": target.name,
            "namespace": target.namespace,
            "uid": target.uid,
        },
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "type": "Warning" if warning else "Normal",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        # One name for both: `kubectl get events` shows the one, events.k8s.io the other.
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
    }
    if action is not None:
        # The API server takes an eventTime (a MicroTime: six digits of fraction) only
        # with an action.
        manifest["action"] = action
        manifest["eventTime"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return manifest


def transient(error: BaseException) -> bool:
    """Whether a failed post may succeed if made again later."""
    if isinstance(error, ApiError):
        return error.status == 429 or error.status >= 500
    return isinstance(error, CONNECTION_ERRORS)


class EventPoster:
    def __init__(self, client: KubeClient, pauses: Sequence[float] = RETRY_PAUSES_SECONDS) -> None:
        self.client = client
        self.pauses = tuple(pauses)
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def post(self, manifest: JSON) -> None:
        """Post `manifest` now; on a transient failure, again later in the background.
        Never raises (but cancellation)."""
        error = await self._attempt(manifest)
        if error is None:
            return
        if not transient(error) or not self.pauses:
            self._drop(manifest, "refused", error)
            return
        if len(self._pending) >= MAX_PENDING:
            self._drop(manifest, "backlog", error)
            return
        task = asyncio.create_task(self._retry(manifest), name=f"event-{manifest['reason']}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait until every background attempt has ended (bound it with asyncio.timeout)."""
        if self._pending:
            await asyncio.wait(set(self._pending))

    async def close(self) -> None:
        """Stop the background attempts (at shutdown, before the client closes)."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def _retry(self, manifest: JSON) -> None:
        error: BaseException | None = None
        for pause in self.pauses:
            await asyncio.sleep(pause)
            error = await self._attempt(manifest)
            if error is None:
                return
            if not transient(error):
                self._drop(manifest, "refused", error)
                return
        self._drop(manifest, "retries", error)

    async def _attempt(self, manifest: JSON) -> BaseException | None:
        try:
            await self.client.create(manifest)
        except ApiError as error:
            if error.status == 409 or error.namespace_gone:
                return None  # made by an attempt whose answer was lost; or nothing to describe
            return error
        except (*CONNECTION_ERRORS, RuntimeError) as error:
            # RuntimeError: the client's session closed under a late attempt at shutdown.
            return error
        return None

    @staticmethod
    def _drop(manifest: JSON, why: str, error: BaseException | None) -> None:
        EVENTS_DROPPED.labels(why=why).inc()
        involved = manifest["involvedObject"]
        log.warning(
            "could not post event %s (%s): %s",
            manifest["reason"],
            why,
            error,
            extra={"session_namespace": involved["namespace"], "session_name": involved["name"]},
        )
