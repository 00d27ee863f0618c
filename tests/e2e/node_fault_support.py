"""What the real node's fault tests share: a watch over every session pod (duplicates ever
seen), the figures file, and the operator's API requests in a window (the audit log)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from e2e_support import REPO, SESSION_LABEL, Release
from kubernetes import client, watch

from corral.cluster.layout import KWOK_NODE_ANNOTATION, Layout
from corral.testing import load

FIGURES = REPO / "docs" / "benchmarks" / "node-faults.json"


@dataclass
class PodLedger:
    """Every pod of every session seen by a watch, and the most live at once."""

    uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    live: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    most_live: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    restarts: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    # Pod uid -> (phase, reason) of each pod seen finished.
    ends: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, kind: str, pod: Any) -> None:
        session = (pod.metadata.labels or {}).get(SESSION_LABEL)
        if session is None:
            return
        uid = pod.metadata.uid
        finished = pod.status.phase in ("Succeeded", "Failed")
        with self.lock:
            self.uids[session].add(uid)
            if finished:
                self.ends[uid] = (pod.status.phase, pod.status.reason)
            if kind == "DELETED" or pod.metadata.deletion_timestamp or finished:
                self.live[session].discard(uid)
            else:
                self.live[session].add(uid)
            self.most_live[session] = max(self.most_live[session], len(self.live[session]))
            count = sum(s.restart_count for s in pod.status.container_statuses or [])
            seen = self.restarts[session]
            if not seen or seen[-1][1] != count:
                seen.append((time.monotonic(), count))


def watch_pods(core: client.CoreV1Api, namespace: str) -> Iterator[PodLedger]:
    """A PodLedger fed by a watch of the namespace's session pods until the generator ends."""
    found = PodLedger()
    stop = threading.Event()
    started = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                listed = core.list_namespaced_pod(namespace, label_selector=SESSION_LABEL)
                for pod in listed.items:
                    found.see("ADDED", pod)
                started.set()
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    namespace,
                    label_selector=SESSION_LABEL,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=20,
                )
                for event in stream:
                    found.see(event["type"], event["object"])
                    if stop.is_set():
                        break
            except Exception:  # expired, or the API server briefly away: list again
                time.sleep(0.5)
                continue

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(30)
    yield found
    stop.set()
    thread.join(30)


def record(key: str, value: Any) -> None:
    figures: dict[str, Any] = {}
    if FIGURES.exists():
        figures = json.loads(FIGURES.read_text())
    figures[key] = value
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def operator_requests(
    layout: Layout, release: Release, since: datetime, until: datetime
) -> dict[str, int]:
    """The operator's API requests received between `since` and `until`, by verb, with
    "all" and "leases" (the leader renews its Lease every 2 s and a standby reads it as
    often: the floor of any window), from the API server's audit log: every request of
    the chart's ServiceAccount, whichever of its pods made it (pods that died included)."""
    user = f"system:serviceaccount:{release.namespace}:{release.name}"
    needle = f'"username":"{user}"'
    seen: dict[str, tuple[str, str]] = {}
    # The log and its rotated backups (audit-<time>.log).
    for log in sorted(layout.audit_log.parent.glob("audit*.log")):
        with log.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if needle not in line:
                    continue
                event = json.loads(line)
                received = datetime.fromisoformat(event["requestReceivedTimestamp"])
                if since <= received <= until:
                    resource = (event.get("objectRef") or {}).get("resource", "")
                    seen[event["auditID"]] = (event["verb"], resource)
    by_verb: dict[str, int] = defaultdict(int)
    for verb, _ in seen.values():
        by_verb[verb] += 1
    leases = sum(1 for _, resource in seen.values() if resource == "leases")
    return {"all": len(seen), "leases": leases, **dict(sorted(by_verb.items()))}


# --- the background load: a few hundred sessions on KWOK's nodes -----------------------------

# Puts a load session on KWOK's fake nodes (never on the real node, where the fault is).
KWOK_PLACEMENT: dict[str, Any] = {
    "scheduling": {
        "nodeSelector": {"type": "kwok"},
        "tolerations": [
            {
                "key": KWOK_NODE_ANNOTATION,
                "operator": "Equal",
                "value": "fake",
                "effect": "NoSchedule",
            }
        ],
    }
}


@dataclass
class BackgroundLoad:
    """Sessions of mixed patterns on KWOK's nodes, reconciled by the same operator (the
    chart's, on the real node) as the sessions a fault test hurts: a fault on the real node,
    and the operator's own recovery from it, must leave every one of them exactly as it was
    (the same pod, phase and volume: nothing recreated, nothing doubled)."""

    core: client.CoreV1Api
    sessions: load.Sessions
    mix: load.Load
    claims: dict[str, str]  # claim name -> uid once converged

    @property
    def namespace(self) -> str:
        return self.sessions.namespace

    def pods(self) -> dict[str, str]:
        """Session -> uid of its live pod."""
        return {
            pod.metadata.labels[SESSION_LABEL]: pod.metadata.uid
            for pod in load.runner_pods(self.core, self.namespace)
            if not pod.metadata.deletion_timestamp
        }

    def changes(self, before: dict[str, str]) -> list[str]:
        """What differs from the converged load whose pods were `before`: empty when every
        session still has the pod it had, its phase true to it, and its volume."""
        expected = load.Expected(awake=set(self.mix.all), asleep=set(), claims=self.claims)
        found = load.problems(
            expected,
            self.sessions.list(),
            load.runner_pods(self.core, self.namespace),
            load.claim_uids(self.core, self.namespace),
        )
        now = self.pods()
        replaced = sorted(name for name, uid in before.items() if now.get(name) != uid)
        if replaced:
            found.append(f"{len(replaced)} load sessions' pods replaced, e.g. {replaced[:3]}")
        return found

    def figures(self, before: dict[str, str]) -> dict[str, Any]:
        """The load's part of a fault's figures; fails if anything of it changed."""
        changes = self.changes(before)
        assert not changes, f"the fault on the real node changed the KWOK load: {changes}"
        return {"load_sessions": len(self.mix.all), "load_pods_replaced": 0, "load_changes": 0}


def start_background_load(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, count: int
) -> BackgroundLoad:
    """`count` sessions on KWOK's nodes in `namespace`, created and converged."""
    mix = load.Load.mixed(count)
    sessions = load.Sessions(custom, namespace, extra_spec=KWOK_PLACEMENT)
    load.ensure_storage_class(client.StorageV1Api(core.api_client))
    load.bind_volumes(core, namespace, mix.hybrid)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(sessions.create, mix.all))
    expected = load.Expected(awake=set(mix.all), asleep=set())
    load.wait_converged(sessions, core, expected, timeout=600)
    return BackgroundLoad(core, sessions, mix, load.claim_uids(core, namespace))
