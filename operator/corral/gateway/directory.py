"""What the gateway knows of every session: its state and its current ready runner pod.

Two informers (AgentSessions, and the pods the operator made) keep a small view per session.
A request for a session that is not ready waits here; a request for an Idle Hybrid session
asks for a wake first (the operator's annotation path), once per sleep however many
requests arrive: they all wait on the same wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from corral.api import runtime
from corral.kube.client import CONNECTION_ERRORS, ApiError, KubeClient
from corral.kube.events import GATEWAY_COMPONENT, EventPoster, EventTarget, event_manifest

log = logging.getLogger("corral.gateway.directory")
JSON = dict[str, Any]
Key = tuple[str, str]
# A wake annotation value names the gateway and the user; bounded like everything that
# reaches the session's status.
MAX_WAKE_VALUE = 200
# While a request is held, the gateway asks a started but not yet Ready runner itself (its
# /readyz, which holds the answer while it starts) rather than wait for the kubelet to see
# it Ready; after an answer of not ready or a failure, asked again this much later.
PROBE_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True)
class Endpoint:
    pod_name: str
    pod_uid: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass
class SessionView:
    namespace: str
    name: str
    uid: str
    pattern: str
    phase: str
    suspended: bool
    result: JSON | None = None
    pods: dict[str, JSON] = field(default_factory=dict)  # pod name -> trimmed pod
    # What the model proxy needs: the budget, and the status it adds metered usage to.
    max_budget_usd: float | None = None
    model_usage: JSON | None = None
    conditions: list[JSON] = field(default_factory=list)
    resource_version: str = ""

    def has_pod_ip(self, ip: str) -> bool:
        """Whether one of this session's live pods has `ip` (the model proxy's caller check).
        Terminating pods count: a draining runner finishes its turn through the proxy."""
        return any(
            pod["owner"] == self.uid
            and pod["namespace"] == self.namespace
            and pod["ip"] == ip
            and pod["phase"] not in _FINISHED
            for pod in self.pods.values()
        )

    def ready_endpoint(self) -> Endpoint | None:
        """The one pod that is Ready, not terminating and owned by this session's UID."""
        for name, pod in sorted(
            self.pods.items(), key=lambda item: item[1]["created"], reverse=True
        ):
            if pod["owner"] == self.uid and pod["ready"] and not pod["deleting"] and pod["ip"]:
                return Endpoint(name, pod["uid"], pod["ip"], pod["port"])
        return None

    def starting_endpoint(self) -> Endpoint | None:
        """The session's newest pod when it runs, has an address and is not Ready yet: the
        one a held request may probe. Never a terminating or a foreign pod."""
        live = [
            (name, pod)
            for name, pod in self.pods.items()
            if pod["owner"] == self.uid and not pod["deleting"]
        ]
        if not live:
            return None
        name, pod = max(live, key=lambda item: item[1]["created"])
        if pod["ready"] or not pod["running"] or not pod["ip"]:
            return None
        return Endpoint(name, pod["uid"], pod["ip"], pod["port"])


_FINISHED = ("Succeeded", "Failed")


class SessionGone(Exception):
    """404: no such session (or deleted while the request waited)."""


class SessionFinished(Exception):
    """410: an Ephemeral session that has finished; carries its result summary."""

    def __init__(self, phase: str, result: JSON | None) -> None:
        super().__init__(f"session has finished ({phase})")
        self.phase = phase
        self.result = result


class SessionSuspended(Exception):
    """409: spec.suspend is true."""


class NotReady(Exception):
    """503: the session did not become ready within the hold limit."""


class WakeFailed(Exception):
    """503: the API server did not take the wake request."""


def _trim_pod(body: JSON) -> JSON:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    owners = [o.get("uid") for o in meta.get("ownerReferences") or () if o.get("controller")]
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    return {
        "uid": str(meta.get("uid", "")),
        "port": _runner_port(body.get("spec") or {}),
        "owner": owners[0] if owners else None,
        "created": str(meta.get("creationTimestamp", "")),
        "deleting": bool(meta.get("deletionTimestamp")),
        "ready": ready and status.get("phase") == "Running",
        "running": status.get("phase") == "Running",
        "ip": str(status.get("podIP") or ""),
        "phase": str(status.get("phase") or ""),
        "namespace": str(meta.get("namespace", "")),
    }


def _runner_port(spec: JSON) -> int:
    """The runner container's named port as the pod declares it (the runtime default else)."""
    for container in spec.get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == runtime.RUNNER_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return runtime.RUNNER_PORT


def _budget(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def wake_value(user: str, now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"gateway {moment} for {user}"[:MAX_WAKE_VALUE]


class Directory:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.events = EventPoster(kube)
        self.sessions: dict[Key, SessionView] = {}
        # Session UID -> key: each pod event finds its session by its owner's UID at once.
        self._by_uid: dict[str, Key] = {}
        # Pods seen before their session (informers are independent): parked by owner UID.
        self._orphans: dict[str, dict[str, JSON]] = {}
        self._changed: dict[Key, asyncio.Event] = {}
        # Pod IPs, for the model proxy's caller check: (namespace, pod) -> (ip, owner UID),
        # and ip -> {(namespace, pod): owner UID}.
        self._pod_ips: dict[Key, tuple[str, str]] = {}
        self._ip_owners: dict[str, dict[Key, str]] = {}
        self._wakes: dict[Key, asyncio.Task[None]] = {}
        # When this replica last asked for a wake, so that requests arriving before the
        # operator has written the new phase do not ask again.
        self._woke_at: dict[Key, float] = {}
        # The last readiness probe of a starting pod per session (pod UID, when, the
        # probe): held requests share it, so a starting runner is asked ten times a second
        # however many requests wait for it.
        self._probes: dict[Key, tuple[str, float, asyncio.Task[bool]]] = {}

    # --- informer callbacks --------------------------------------------------------------

    def on_session(self, kind: str, body: JSON) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        gone = self.sessions.get(key)
        if gone is not None:
            self._by_uid.pop(gone.uid, None)
        if kind == "DELETED":
            self.sessions.pop(key, None)
            self._woke_at.pop(key, None)
            self._probes.pop(key, None)
        else:
            spec = body.get("spec") or {}
            status = body.get("status") or {}
            old = self.sessions.get(key)
            uid = str(meta.get("uid", ""))
            view = SessionView(
                namespace=key[0],
                name=key[1],
                uid=uid,
                pattern=str(spec.get("pattern", "")),
                phase=str(status.get("phase") or "Pending"),
                suspended=bool(spec.get("suspend")),
                result=status.get("result"),
                pods=old.pods if old and old.uid == uid else self._orphans.pop(uid, {}),
                max_budget_usd=_budget(spec.get("maxBudgetUsd")),
                model_usage=status.get("modelUsage"),
                conditions=list(status.get("conditions") or ()),
                resource_version=str(meta.get("resourceVersion", "")),
            )
            self.sessions[key] = view
            self._by_uid[uid] = key
            if view.phase != "Idle":
                # The wake asked for has happened: the next sleep needs a wake of its own,
                # however soon it comes (else requests within 30 s were held until 503).
                self._woke_at.pop(key, None)
        self._notify(key)

    def on_pod(self, kind: str, body: JSON) -> None:
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        pod = _trim_pod(body)
        owner = pod["owner"]
        if not owner:
            return  # not a session's pod: nothing to route to
        self._index_ip(namespace, name, owner, "" if kind == "DELETED" else pod["ip"])
        key = self._by_uid.get(owner)
        session = self.sessions.get(key) if key and key[0] == namespace else None
        if session is None:
            parked = self._orphans.setdefault(owner, {})
            if kind == "DELETED":
                parked.pop(name, None)
                if not parked:
                    self._orphans.pop(owner, None)
            else:
                parked[name] = pod
            return
        if kind == "DELETED":
            session.pods.pop(name, None)
        else:
            session.pods[name] = pod
        self._notify((session.namespace, session.name))

    def _index_ip(self, namespace: str, pod: str, owner: str, ip: str) -> None:
        key = (namespace, pod)
        old = self._pod_ips.pop(key, None)
        if old is not None:
            owners = self._ip_owners.get(old[0], {})
            owners.pop(key, None)
            if not owners:
                self._ip_owners.pop(old[0], None)
        if ip:
            self._pod_ips[key] = (ip, owner)
            self._ip_owners.setdefault(ip, {})[key] = owner

    def sessions_at(self, ip: str) -> list[SessionView]:
        """The sessions with a live pod at `ip` (one, unless pods share the host's network)."""
        found: dict[Key, SessionView] = {}
        for owner in self._ip_owners.get(ip, {}).values():
            key = self._by_uid.get(owner)
            session = self.sessions.get(key) if key else None
            if session is not None and session.has_pod_ip(ip):
                found[key] = session  # type: ignore[index]  # key is set when session is
        return list(found.values())

    def _notify(self, key: Key) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def _changed_or_timeout(self, key: Key, seconds: float) -> None:
        event = self._changed.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def newer_view(
        self, session: SessionView, version: str, seconds: float
    ) -> SessionView | None:
        """`session` once the watch brings a version other than `version`; None when it is
        gone or was made again, or no other version comes within `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        key = (session.namespace, session.name)
        while True:
            current = self.sessions.get(key)
            if current is None or current.uid != session.uid:
                return None
            if current.resource_version != version:
                return current
            left = deadline - loop.time()
            if left <= 0:
                return None
            await self._changed_or_timeout(key, left)

    # --- what requests use ---------------------------------------------------------------

    def view(self, namespace: str, name: str) -> SessionView:
        session = self.sessions.get((namespace, name))
        if session is None:
            raise SessionGone(f"no session {namespace}/{name}")
        return session

    def check_reachable(self, session: SessionView) -> None:
        """Raise what a request to a session that cannot serve it must answer."""
        if session.phase in ("Succeeded", "Failed"):
            raise SessionFinished(session.phase, session.result)
        if session.suspended:
            raise SessionSuspended(
                f"session {session.namespace}/{session.name} is suspended (spec.suspend: true); "
                "resume it with `corral wake` or by setting spec.suspend to false"
            )

    def needs_wake(self, session: SessionView, recent_seconds: float = 30.0) -> bool:
        if session.phase != "Idle" or session.ready_endpoint() is not None:
            return False
        asked = self._woke_at.get((session.namespace, session.name))
        return asked is None or asyncio.get_running_loop().time() - asked > recent_seconds

    async def wake(self, session: SessionView, user: str) -> bool:
        """Ask the operator to wake an Idle session, once for all concurrent callers.
        True when this call started the wake; WakeFailed when the API server refused it
        (the next request asks again)."""
        key = (session.namespace, session.name)
        task = self._wakes.get(key)
        started = task is None or task.done()
        if started:
            task = asyncio.create_task(self._ask_wake(session, user))
            self._wakes[key] = task
            self._woke_at[key] = asyncio.get_running_loop().time()
            task.add_done_callback(lambda _: self._wakes.pop(key, None))
        assert task is not None
        try:
            await asyncio.shield(task)
        except (ApiError, *CONNECTION_ERRORS) as error:
            self._woke_at.pop(key, None)
            raise WakeFailed(
                f"could not wake session {session.namespace}/{session.name}: the API server "
                f"did not take the wake annotation ({str(error)[:200]}); retry shortly"
            ) from None
        return started

    async def _ask_wake(self, session: SessionView, user: str) -> None:
        value = wake_value(user)
        await self.kube.patch(
            "AgentSession",
            session.namespace,
            session.name,
            {"metadata": {"annotations": {runtime.WAKE_ANNOTATION: value}}},
        )
        log.info(
            "woke session",
            extra={
                "session_name": session.name,
                "session_namespace": session.namespace,
                "fields": {"user": user},
            },
        )
        target = EventTarget(session.namespace, session.name, session.uid)
        message = f"woken by the gateway for {user}"
        await self.events.post(
            event_manifest(target, "WokenByRequest", message, GATEWAY_COMPONENT, action="Wake")
        )

    def _probe_task(
        self, key: Key, endpoint: Endpoint, probe: Callable[[Endpoint], Coroutine[Any, Any, bool]]
    ) -> asyncio.Task[bool]:
        """The probe of `endpoint` under way or just done, else a new one. Its end wakes
        the waiters (an address nobody answers on must not hold them up to its timeout)."""
        now = asyncio.get_running_loop().time()
        last = self._probes.get(key)
        if last is not None:
            pod_uid, started, task = last
            if pod_uid == endpoint.pod_uid and (
                not task.done() or now - started < PROBE_INTERVAL_SECONDS
            ):
                return task
        task = asyncio.create_task(probe(endpoint))
        task.add_done_callback(lambda _: self._notify(key))
        self._probes[key] = (endpoint.pod_uid, now, task)
        return task

    async def ready_endpoint(
        self,
        namespace: str,
        name: str,
        hold_seconds: float,
        on_wait: Any = None,
        probe: Callable[[Endpoint], Coroutine[Any, Any, bool]] | None = None,
    ) -> Endpoint:
        """The session's ready pod, waiting up to `hold_seconds` for one.

        `on_wait`, if given, is awaited about every 5 s while waiting (SSE `: waking`).
        `probe`, if given, asks a started pod's runner whether it is ready (one probe at a
        time, the next PROBE_INTERVAL_SECONDS after an answer): a woken runner is used the
        moment it is, not when the kubelet sees it and the pod's Ready reaches the informer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold_seconds
        key = (namespace, name)
        next_ping = loop.time()
        while True:
            session = self.view(namespace, name)
            self.check_reachable(session)
            endpoint = session.ready_endpoint()
            if endpoint is not None:
                return endpoint
            now = loop.time()
            if now >= deadline:
                raise NotReady(
                    f"session {namespace}/{name} did not become ready within {hold_seconds:g} s "
                    f"(phase {session.phase}); try again shortly"
                )
            if on_wait is not None and now >= next_ping:
                await on_wait()
                next_ping = now + 5.0
            wait = min(deadline - now, max(0.05, next_ping - now))
            starting = session.starting_endpoint() if probe is not None else None
            if starting is not None and probe is not None:
                task = self._probe_task(key, starting, probe)
                answered = task.done() and not task.cancelled() and task.exception() is None
                if answered and task.result():
                    self._probes.pop(key, None)
                    return starting
                wait = min(wait, PROBE_INTERVAL_SECONDS)
            await self._changed_or_timeout(key, wait)
