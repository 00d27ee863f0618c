"""What the real node's fault tests share: a watch over every session pod (duplicates ever
seen), the figures file, and the operator's own count of its API requests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from e2e_support import REPO, SESSION_LABEL, Release
from kubernetes import client, watch

FIGURES = REPO / "docs" / "benchmarks" / "node-faults.json"
# The operator's counter of its own API requests (corral.kube.client), by verb and kind.
REQUESTS_METRIC = "corral_kube_requests_total"
# In an operator pod (the image's venv): print the operator's /metrics.
READ_METRICS = (
    "import urllib.request;"
    "print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
)


@dataclass
class PodLedger:
    """Every pod of every session seen by a watch, and the most live at once."""

    uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    live: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    most_live: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    restarts: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, kind: str, pod: Any) -> None:
        session = (pod.metadata.labels or {}).get(SESSION_LABEL)
        if session is None:
            return
        uid = pod.metadata.uid
        finished = pod.status.phase in ("Succeeded", "Failed")
        with self.lock:
            self.uids[session].add(uid)
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


def pod_is_ready(pod: Any) -> bool:
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return bool(pod.status.phase == "Running" and conditions.get("Ready") == "True")


def requests_in(metrics: str) -> dict[str, int]:
    """The operator's API requests by verb, from its /metrics text."""
    by_verb: dict[str, int] = defaultdict(int)
    pattern = re.compile(rf"^{REQUESTS_METRIC}\{{([^}}]*)\}} ([0-9.e+]+)$")
    for line in metrics.splitlines():
        found = pattern.match(line)
        if found is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        by_verb[labels.get("verb", "?")] += int(float(found.group(2)))
    return dict(by_verb)


def operator_requests(release: Release, port: int = 8081) -> dict[str, dict[str, int]]:
    """Each live operator pod's API requests since it started, by verb (read from the
    pod's own /metrics with an exec: its NetworkPolicy admits only sessions there)."""
    counts: dict[str, dict[str, int]] = {}
    for pod in release.pods():
        if pod.status.phase != "Running":
            continue
        done = release.kubectl(
            "exec", pod.metadata.name, "-c", "operator", "--",
            "/opt/corral/bin/python", "-c", READ_METRICS.format(port=port),
        )  # fmt: skip
        if done.returncode == 0:
            counts[pod.metadata.name] = requests_in(done.stdout)
    return counts


def requests_between(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, int]:
    """Requests by verb (and "all") made between two readings, by the pods in both; a pod
    only in `after` started in between: all its requests count."""
    by_verb: dict[str, int] = defaultdict(int)
    for pod, counts in after.items():
        for verb, count in counts.items():
            by_verb[verb] += count - before.get(pod, {}).get(verb, 0)
    return {"all": sum(by_verb.values()), **dict(sorted(by_verb.items()))}
