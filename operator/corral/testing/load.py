"""A load of many AgentSessions of mixed patterns for KWOK's fake nodes, and the check that
nothing of it was lost: the chaos suite's load, and the real-node suite's background load.

`Load.mixed(n)` names the sessions by role: LongRunning, Shared and Ephemeral sessions (a
KWOK pod runs nothing, so each stays Running), Hybrid sessions that stay awake (idleTimeout
1h) and Hybrid "sleepers" a scenario may send to sleep. Hybrid sessions need a
PersistentVolume bound in advance to their claim (`bind_volumes`: there is no provisioner).
`problems` is what must hold at the end, per session: its phase, exactly one live pod when
awake and none when asleep, its volume the same object as before; no pod without a live
session. `PodHistory` watches the pods through outages, to see two pods of one session at once.

Every client call retries through an outage (an API server or etcd that is down).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from corral.render.meta import SESSION_LABEL
from corral.testing.kube import wait_for

GROUP, VERSION, PLURAL = "corral.dev", "v1alpha1", "agentsessions"
RUNNER_LABELS = "app.kubernetes.io/managed-by=corral,app.kubernetes.io/component=runner"
SMALL = {"cpu": "100m", "memory": "256Mi", "disk": "64Mi"}
# The Hybrid sessions' class: no provisioner, every volume bound in advance (`bind_volumes`).
STORAGE_CLASS = "corral-load-manual"
T = TypeVar("T")


# --- retrying client calls ---------------------------------------------------------------


def retrying(call: Callable[[], T], timeout: float = 180.0, ok_statuses: Iterable[int] = ()) -> T:
    """`call()` until it answers: connection errors and 5xx/429 (an API server or etcd that
    is down) are retried; other API errors are raised, except `ok_statuses` (then None)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as error:
            if error.status in set(ok_statuses):
                return None  # type: ignore[return-value]
            if error.status not in (429, 500, 502, 503, 504) or time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


# --- the load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """Session names by role."""

    long_running: list[str]
    shared: list[str]
    ephemeral: list[str]
    hybrid_awake: list[str]
    sleepers: list[str]

    @classmethod
    def mixed(cls, count: int) -> Load:
        """40% LongRunning, 10% Shared, 10% Ephemeral, 20% Hybrid awake, 20% sleepers."""
        roles: dict[str, list[str]] = defaultdict(list)
        prefixes = ["lr", "lr", "lr", "lr", "sh", "ep", "hy", "hy", "sl", "sl"]
        for index in range(count):
            prefix = prefixes[index % len(prefixes)]
            roles[prefix].append(f"{prefix}-{index:04d}")
        return cls(roles["lr"], roles["sh"], roles["ep"], roles["hy"], roles["sl"])

    @property
    def awake(self) -> list[str]:
        return self.long_running + self.shared + self.ephemeral + self.hybrid_awake

    @property
    def hybrid(self) -> list[str]:
        return self.hybrid_awake + self.sleepers

    @property
    def all(self) -> list[str]:
        return self.awake + self.sleepers

    def counts(self) -> dict[str, int]:
        return {
            "LongRunning": len(self.long_running),
            "Shared": len(self.shared),
            "Ephemeral": len(self.ephemeral),
            "Hybrid awake": len(self.hybrid_awake),
            "Hybrid sent to sleep": len(self.sleepers),
        }


def spec_for(name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec of a load session by its name's role prefix, plus `extra` fields (e.g. a
    `scheduling` that puts it on KWOK's nodes)."""
    prefix = name.split("-", 1)[0]
    spec: dict[str, Any]
    if prefix == "lr":
        spec = {"pattern": "LongRunning", "resources": SMALL}
    elif prefix == "sh":
        spec = {"pattern": "Shared", "agents": [{"name": "a"}, {"name": "b"}], "resources": SMALL}
    elif prefix == "ep":
        spec = {"pattern": "Ephemeral", "prompt": "Say hello.", "resources": SMALL}
    else:
        spec = {
            "pattern": "Hybrid",
            "idleTimeout": "1h",
            "resources": SMALL,
            "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS},
        }
    return {**spec, **(extra or {})}


def claim_of(name: str) -> str:
    return f"{name}-state"


def bind_volumes(core: client.CoreV1Api, namespace: str, names: list[str]) -> list[str]:
    """PersistentVolumes bound in advance to these sessions' claims; their names."""
    volumes = []
    for name in names:
        volume = f"{namespace}-{claim_of(name)}"
        body = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=volume, labels={"corral-load": namespace}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadWriteOncePod"],
                persistent_volume_reclaim_policy="Retain",
                storage_class_name=STORAGE_CLASS,
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/corral-load/{volume}"),
                claim_ref=client.V1ObjectReference(
                    kind="PersistentVolumeClaim", namespace=namespace, name=claim_of(name)
                ),
            ),
        )
        retrying(partial(core.create_persistent_volume, body), ok_statuses=(409,))
        volumes.append(volume)
    return volumes


def ensure_storage_class(storage: client.StorageV1Api) -> None:
    """The load's class: nothing provisions it (`bind_volumes` does)."""
    body = client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=STORAGE_CLASS),
        provisioner="kubernetes.io/no-provisioner",
        volume_binding_mode="Immediate",
    )
    retrying(lambda: storage.create_storage_class(body), ok_statuses=(409,))


@dataclass
class Sessions:
    custom: client.CustomObjectsApi
    namespace: str
    extra_spec: dict[str, Any] = field(default_factory=dict)

    def create(self, name: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentSession",
            "metadata": {"name": name},
            "spec": spec_for(name, self.extra_spec),
        }
        retrying(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            ),
            ok_statuses=(409,),  # made by an attempt whose answer was lost in the outage
        )

    def patch(self, name: str, body: dict[str, Any]) -> None:
        retrying(
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body
            )
        )

    def delete(self, name: str) -> None:
        retrying(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            ),
            ok_statuses=(404,),
        )

    def list(self) -> list[dict[str, Any]]:
        found: Any = retrying(
            lambda: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL
            )
        )
        items: list[dict[str, Any]] = found["items"]
        return items


def pod_is_ready(pod: Any) -> bool:
    """The pod runs and its Ready condition is True (what the operator's Running phase
    follows)."""
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return bool(pod.status.phase == "Running" and conditions.get("Ready") == "True")


def phase_of(session: dict[str, Any]) -> str | None:
    phase: str | None = (session.get("status") or {}).get("phase")
    return phase


def runner_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    pods: list[Any] = retrying(
        lambda: core.list_namespaced_pod(namespace, label_selector=RUNNER_LABELS)
    ).items
    return pods


def claim_uids(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    claims: list[Any] = retrying(
        lambda: core.list_namespaced_persistent_volume_claim(namespace)
    ).items
    return {c.metadata.name: c.metadata.uid for c in claims if not c.metadata.deletion_timestamp}


# --- what must hold ------------------------------------------------------------------------


@dataclass
class Expected:
    """The end state: which sessions exist, which are awake, which volumes must be kept."""

    awake: set[str]
    asleep: set[str]
    claims: dict[str, str] = field(default_factory=dict)  # claim name -> UID before the fault

    @property
    def sessions(self) -> set[str]:
        return self.awake | self.asleep


def problems(
    expected: Expected, sessions: list[dict[str, Any]], pods: list[Any], claims: dict[str, str]
) -> list[str]:
    """Everything that differs from `expected`; empty when converged."""
    found: list[str] = []
    by_name = {s["metadata"]["name"]: s for s in sessions}
    uids = {s["metadata"]["uid"] for s in sessions}
    missing = expected.sessions - set(by_name)
    extra = set(by_name) - expected.sessions
    if missing:
        found.append(f"{len(missing)} sessions missing, e.g. {sorted(missing)[:3]}")
    if extra:
        found.append(f"{len(extra)} sessions that should be gone, e.g. {sorted(extra)[:3]}")
    live: dict[str, list[Any]] = defaultdict(list)
    for pod in pods:
        session = (pod.metadata.labels or {}).get(SESSION_LABEL, "?")
        owners = {o.uid for o in pod.metadata.owner_references or []}
        if session not in expected.sessions or not owners & uids:
            found.append(f"orphan pod {pod.metadata.name} (session {session})")
            continue
        if not pod.metadata.deletion_timestamp:
            live[session].append(pod)
    # A wrong phase is the operator's when the pod is there, running and ready (its status
    # is not true to the world); else the pod waits for the scheduler or KWOK.
    wrong_phase: dict[bool, list[str]] = {True: [], False: []}
    for name in sorted(expected.sessions & set(by_name)):
        phase = phase_of(by_name[name])
        if phase == ("Running" if name in expected.awake else "Idle"):
            continue
        pods_text = ", ".join(
            f"{p.metadata.name} {p.status.phase}"
            f"{' not ready' if p.status.phase == 'Running' and not pod_is_ready(p) else ''} "
            f"on {p.spec.node_name}"
            for p in live[name]
        )
        running = bool(live[name]) and all(pod_is_ready(p) for p in live[name])
        wrong_phase[running or name not in expected.awake].append(
            f"{name}: {phase} (pods: {pods_text})"
        )
    if wrong_phase[True]:
        found.append(
            f"{len(wrong_phase[True])} sessions whose phase is not true to their pods, "
            f"e.g. {wrong_phase[True][:3]}"
        )
    if wrong_phase[False]:
        found.append(
            f"{len(wrong_phase[False])} sessions waiting for their pod to run and be ready "
            f"(scheduler, KWOK), e.g. {wrong_phase[False][:3]}"
        )
    pod_count = [
        f"{name}: {len(live.get(name, []))}"
        for name in sorted(expected.sessions)
        if len(live.get(name, [])) != (1 if name in expected.awake else 0)
    ]
    if pod_count:
        found.append(f"{len(pod_count)} sessions with a wrong pod count, e.g. {pod_count[:3]}")
    for claim, uid in sorted(expected.claims.items()):
        if claims.get(claim) != uid:
            found.append(f"volume {claim} lost or replaced ({uid} -> {claims.get(claim)})")
    return found


# KWOK (the kubelets' stand-in) does not retry a status patch the API server refused with
# 500 (etcd away): the pod stays Pending on its node, where a kubelet would resync it within
# a minute. A pod bound but Pending this long gets KWOK restarted (it replays every pod).
STRANDED_SECONDS = 30.0


def stranded_on_node(pods: list[Any]) -> list[str]:
    """Pods bound to a node but not started there."""
    return [
        pod.metadata.name
        for pod in pods
        if pod.spec.node_name
        and pod.status.phase == "Pending"
        and not pod.metadata.deletion_timestamp
    ]


def wait_converged(
    sessions: Sessions,
    core: client.CoreV1Api,
    expected: Expected,
    timeout: float = 240.0,
    resync_kwok: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Seconds until the operator's part was done (every pod made or removed, no orphan,
    every volume kept, every status true to its pod) and until the world matched
    `expected` (every awake pod running too, which waits for the scheduler and KWOK);
    fails naming what still differs. With `resync_kwok`, a pod left Pending on its node for
    STRANDED_SECONDS gets KWOK restarted (counted in `kwok_resyncs`)."""
    started = time.monotonic()
    last: list[str] = []
    pods_right: float | None = None
    stranded_since: float | None = None
    resyncs = 0

    def converged() -> bool:
        nonlocal last, pods_right, stranded_since, resyncs
        pods = runner_pods(core, sessions.namespace)
        last = problems(expected, sessions.list(), pods, claim_uids(core, sessions.namespace))
        now = time.monotonic()
        if pods_right is None and not [p for p in last if "waiting for their pod" not in p]:
            pods_right = now - started
        if not stranded_on_node(pods):
            stranded_since = None
        elif stranded_since is None:
            stranded_since = now
        elif resync_kwok is not None and now - stranded_since >= STRANDED_SECONDS:
            resync_kwok()
            resyncs += 1
            stranded_since = None
        return not last

    try:
        wait_for(converged, timeout=timeout, interval=1.0, what="every session converged")
    except TimeoutError as error:
        raise AssertionError(f"not converged after {timeout:.0f}s: {last[:8]}") from error
    done = time.monotonic() - started
    return {
        "operator_done": round(pods_right or done, 1),
        "converged": round(done, 1),
        "kwok_resyncs": resyncs,
    }


# --- a pod history that survives outages ----------------------------------------------------


@dataclass
class PodHistory:
    """Every runner pod of a namespace seen through a watch that survives the API server's
    outages (it watches again from where it was, or lists again after 410 Gone): the pods
    each session ever had, the most it had at one moment, and when each pod was first seen.
    A pod made and deleted again entirely within a gap between two lists is not seen."""

    core: client.CoreV1Api
    namespace: str
    created: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    alive: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    most_at_once: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # uid -> session, t
    # uid -> how each pod of a session looked when it had the most pods at once (for a
    # failure's message: a second pod, or a replacement beside a terminating one?)
    at_most: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    last_seen: dict[str, str] = field(default_factory=dict)  # uid -> a one-line description
    relists: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PodHistory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _relist(self) -> str:
        listed: Any = self.core.list_namespaced_pod(self.namespace, label_selector=RUNNER_LABELS)
        with self._lock:
            present = set()
            for pod in listed.items:
                self._seen("ADDED", pod)
                present.add(pod.metadata.uid)
            for uids in self.alive.values():
                uids &= present
        return str(listed.metadata.resource_version)

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                if version is None:
                    version = self._relist()
                    self.relists += 1
                    self._started.set()
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=RUNNER_LABELS,
                    resource_version=version,
                    timeout_seconds=5,
                    _request_timeout=30,
                ):
                    if event["type"] == "ERROR":
                        version = None
                        break
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    with self._lock:
                        self._seen(event["type"], pod)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    version = None
                else:
                    time.sleep(0.3)
            except Exception:  # the API server is down: watch again from where we were
                time.sleep(0.3)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]

    def _seen(self, kind: str, pod: Any) -> None:
        session = (pod.metadata.labels or {}).get(SESSION_LABEL, "?")
        uid = pod.metadata.uid
        if kind == "DELETED":
            self.alive[session].discard(uid)
            return
        self.created[session].add(uid)
        self.first_seen.setdefault(uid, (session, time.monotonic()))
        self.alive[session].add(uid)
        meta = pod.metadata
        self.last_seen[uid] = (
            f"{meta.name} uid={uid} phase={pod.status.phase if pod.status else None} "
            f"created={meta.creation_timestamp} deleting={meta.deletion_timestamp}"
        )
        if len(self.alive[session]) > self.most_at_once[session]:
            self.most_at_once[session] = len(self.alive[session])
            self.at_most[session] = [self.last_seen[u] for u in sorted(self.alive[session])]

    def duplicates(self) -> dict[str, int]:
        """Sessions that had more than one pod at one moment."""
        with self._lock:
            return {s: n for s, n in self.most_at_once.items() if n > 1}

    def described(self, sessions: Iterable[str]) -> dict[str, list[str]]:
        """Each session's pods as seen at the moment it had the most at once."""
        with self._lock:
            return {s: list(self.at_most[s]) for s in sessions}

    def pods_ever(self, session: str) -> int:
        with self._lock:
            return len(self.created[session])

    def created_after(self, session: str, moment: float) -> int:
        with self._lock:
            return sum(1 for s, t in self.first_seen.values() if s == session and t > moment)
