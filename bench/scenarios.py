"""The benchmark scenarios of issue 8, each returning plain numbers for the report."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.kube import JSON, Watch, gather_limited, percentile, request_counts, writes
from corral.api.runtime import WAKE_ANNOTATION
from corral.api.units import parse_duration
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.kube.client import ApiError, KubeClient
from corral.render import render_children
from corral.testing.operator import OperatorProcess

SMALL = {"cpu": "10m", "memory": "256Mi", "disk": "64Mi"}
CLIENT_CONCURRENCY = 64
SESSION_LABEL = "corral.dev/session"


def session_manifest(name: str, pattern: str = "LongRunning", idle: str | None = None) -> JSON:
    spec: JSON = {"pattern": pattern, "resources": SMALL}
    if idle:
        spec["idleTimeout"] = idle
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": spec,
    }


async def make_namespace(client: KubeClient, name: str) -> None:
    await client.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})


async def drop_namespace(client: KubeClient, name: str, limit: float = 600) -> float:
    started = time.monotonic()
    try:
        await client.request("DELETE", f"/api/v1/namespaces/{name}")
    except ApiError:
        return 0.0
    while time.monotonic() - started < limit:
        try:
            await client.request("GET", f"/api/v1/namespaces/{name}")
        except ApiError as error:
            if error.status == 404:
                break
        await asyncio.sleep(2)
    return time.monotonic() - started


async def wait_until(predicate: Any, limit: float, what: str, poll: float = 0.2) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(poll)
    return time.monotonic() - started


@dataclass
class BurstResult:
    mode: str
    count: int
    created_seconds: float  # first request -> last pod seen
    running_seconds: float  # first request -> last pod Running
    sessions_per_second: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    client_rate: float = 0.0  # sessions/s the client issued creates at
    paced: bool = False

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def _pod_session(body: JSON) -> str:
    return str(body["metadata"].get("labels", {}).get(SESSION_LABEL, body["metadata"]["name"]))


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    return {name: _proc_times(pid)[0] for name, pid in pids.items()}


async def burst(
    client: KubeClient,
    namespace: str,
    count: int,
    mode: str,
    config: OperatorConfig,
    pids: dict[str, int] | None = None,
    rate: float | None = None,
) -> BurstResult:
    """Create `count` sessions (mode "operator") or their children directly ("floor");
    `rate`: sessions per second the client paces itself to (None: as fast as it can)."""
    watch = Watch("Pod", namespace)
    await watch.start(client)
    issued: dict[str, float] = {}
    names = [f"s{i:05d}" for i in range(count)]

    async def create_session(name: str) -> None:
        issued[name] = time.time()
        await client.create(
            {**session_manifest(name), "metadata": {"name": name, "namespace": namespace}}
        )

    async def create_children(name: str) -> None:
        issued[name] = time.time()
        body = session_manifest(name)
        body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()))
        children = render_children(AgentSession.model_validate(body), config, attempt=1)
        for child in (children.pod, children.service, children.network_policy):
            # No owner: the garbage collector would delete children of a missing session.
            child["metadata"].pop("ownerReferences", None)
            child["metadata"]["labels"][SESSION_LABEL] = name
        await asyncio.gather(
            client.create(children.pod),
            client.create(children.service),
            client.create(children.network_policy),
        )

    create = create_session if mode == "operator" else create_children
    cpu_before = cpu_seconds(pids or {})
    started = time.time()
    if rate is None:
        await gather_limited([create(n) for n in names], CLIENT_CONCURRENCY)
    else:
        pending = []
        for index, name in enumerate(names):
            delay = started + index / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(create(name)))
        await asyncio.gather(*pending)
    client_rate = count / max(max(issued.values()) - started, 1e-3)
    timeout = 120 + count * 0.2
    await wait_until(lambda: len(watch.added) >= count, timeout, f"{count} pods created")
    await wait_until(lambda: len(watch.running) >= count, timeout, f"{count} pods Running")
    cpu_after = cpu_seconds(pids or {})
    await watch.stop()
    created_at = {
        _pod_session(watch.bodies[p]): t for p, t in watch.added.items() if p in watch.bodies
    }
    latencies = [(created_at[n] - issued[n]) * 1000 for n in names if n in created_at]
    created_seconds = max(watch.added.values()) - started
    return BurstResult(
        mode=mode,
        count=count,
        created_seconds=created_seconds,
        running_seconds=max(watch.running.values()) - started,
        sessions_per_second=count / created_seconds,
        latencies_ms=latencies,
        cpu_seconds={k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
        client_rate=round(client_rate, 1),
        paced=rate is not None,
    )


async def wait_settled(operator: OperatorProcess, quiet: float = 6, limit: float = 600) -> None:
    """Wait until the operator's backlog is done: no reconcile for `quiet` seconds."""
    settled_since, last = time.monotonic(), -1.0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        count = operator.metric("corral_reconcile_duration_seconds_count")
        if count != last:
            settled_since, last = time.monotonic(), count
        elif time.monotonic() - settled_since >= quiet:
            return
        await asyncio.sleep(2)


def _proc_times(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    rss = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    import os

    return ticks / os.sysconf("SC_CLK_TCK"), rss


async def at_rest(operator: OperatorProcess, sessions: int, seconds: float = 30) -> JSON:
    assert operator.proc is not None
    pid = operator.proc.pid
    await wait_settled(operator)
    cpu0, _ = _proc_times(pid)
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1)
        samples.append(_proc_times(pid)[1])
    cpu1, _ = _proc_times(pid)
    return {
        "sessions": sessions,
        "rss_mb": round(max(samples) / 2**20, 1),
        "cpu_percent": round(100 * (cpu1 - cpu0) / (time.monotonic() - started), 2),
    }


async def api_costs(
    client: KubeClient, operator: OperatorProcess, namespace: str, count: int
) -> JSON:
    """Writes per session over create, idle scale-down, wake and delete (Hybrid, 5 s idle)."""
    sessions_watch = Watch("AgentSession", namespace)
    pods = Watch("Pod", namespace)
    await sessions_watch.start(client)
    await pods.start(client)
    names = [f"h{i:04d}" for i in range(count)]
    phases: dict[str, JSON] = {}

    def phase_of(name: str) -> str | None:
        body = sessions_watch.bodies.get(name)
        return (body or {}).get("status", {}).get("phase")

    async def snapshot() -> tuple[Counter[tuple[str, str]], float]:
        return await request_counts(client), operator.metric("corral_kube_requests_total")

    steps: list[tuple[str, Any, Any]] = [
        (
            "create",
            lambda: gather_limited(
                [
                    client.create(
                        {
                            **session_manifest(n, "Hybrid", "5s"),
                            "metadata": {"name": n, "namespace": namespace},
                        }
                    )
                    for n in names
                ],
                CLIENT_CONCURRENCY,
            ),
            lambda: all(
                phase_of(n) in ("Pending", "Running") and n in _sessions_with_pods(pods)
                for n in names
            ),
        ),
        ("idle scale-down", None, lambda: all(phase_of(n) == "Idle" for n in names)),
        (
            "wake",
            lambda: gather_limited(
                [
                    client.patch(
                        "AgentSession",
                        namespace,
                        n,
                        {"metadata": {"annotations": {WAKE_ANNOTATION: "1"}}},
                    )
                    for n in names
                ],
                CLIENT_CONCURRENCY,
            ),
            lambda: all(
                phase_of(n) in ("Pending", "Running")
                and (sessions_watch.bodies[n].get("status", {}).get("wakeCount") or 0) >= 1
                for n in names
            ),
        ),
        (
            "delete",
            lambda: gather_limited(
                [client.delete("AgentSession", namespace, n) for n in names], CLIENT_CONCURRENCY
            ),
            lambda: not pods.bodies and all(n not in sessions_watch.bodies for n in names),
        ),
    ]
    for step, action, done in steps:
        before, op_before = await snapshot()
        if action is not None:
            await action()
        await wait_until(done, 180, step)
        await asyncio.sleep(3)  # late writes (events, GC) of this step
        after, op_after = await snapshot()
        delta = writes(after - before)
        phases[step] = {
            "apiserver_writes_per_session": {
                f"{v} {r}": round(c / count, 2) for (v, r), c in sorted(delta.items())
            },
            "operator_requests_per_session": round((op_after - op_before) / count, 2),
        }
    await sessions_watch.stop()
    await pods.stop()
    return phases


def _sessions_with_pods(pods: Watch) -> set[str]:
    return {_pod_session(b) for b in pods.bodies.values()}


async def idle_precision(
    client: KubeClient, namespace: str, count: int, base: int = 60, spread: int = 60
) -> JSON:
    """Hybrid sessions with staggered idle timeouts; lateness of each scale-down."""
    sessions = Watch("AgentSession", namespace)
    pods = Watch("Pod", namespace)
    await sessions.start(client)
    await pods.start(client)
    timeouts = {f"i{i:05d}": f"{base + i % spread}s" for i in range(count)}
    await gather_limited(
        [
            client.create(
                {
                    **session_manifest(n, "Hybrid", t),
                    "metadata": {"name": n, "namespace": namespace},
                }
            )
            for n, t in timeouts.items()
        ],
        CLIENT_CONCURRENCY,
    )

    def idle(name: str) -> bool:
        return (sessions.bodies.get(name) or {}).get("status", {}).get("phase") == "Idle"

    await wait_until(
        lambda: all(idle(n) for n in timeouts), base + spread + 300, "all sessions Idle", poll=1
    )
    pod_deleted_at: dict[str, float] = {}
    for pod, seen in {**pods.deleted, **pods.deleting}.items():
        session = pods.sessions.get(pod, pod)
        pod_deleted_at[session] = min(seen, pod_deleted_at.get(session, seen))
    lateness = []
    for name, timeout in timeouts.items():
        status = sessions.bodies[name]["status"]
        last = datetime.fromisoformat(status["lastActivityTime"].replace("Z", "+00:00")).timestamp()
        deadline = last + parse_duration(timeout).total_seconds()
        if name in pod_deleted_at:
            lateness.append(pod_deleted_at[name] - deadline)
    await sessions.stop()
    await pods.stop()
    return {
        "sessions": count,
        "measured": len(lateness),
        "lateness_s": lateness,
        "p50_s": round(percentile(lateness, 50), 3),
        "p99_s": round(percentile(lateness, 99), 3),
        "max_s": round(max(lateness), 3) if lateness else None,
    }


async def wake_latency(
    client: KubeClient, operator: OperatorProcess, namespace: str, count: int, rate: float = 20.0
) -> JSON:
    """Annotate `count` idle sessions; time from the wake request to the new pod."""
    pods = Watch("Pod", namespace)
    await pods.start(client)
    before = set(pods.bodies)
    listed = await client.request(
        "GET", f"/apis/corral.dev/v1alpha1/namespaces/{namespace}/agentsessions"
    )
    names = [
        i["metadata"]["name"] for i in listed["items"] if i.get("status", {}).get("phase") == "Idle"
    ][:count]
    asked: dict[str, float] = {}

    async def wake(name: str) -> None:
        asked[name] = time.time()
        await client.patch(
            "AgentSession", namespace, name, {"metadata": {"annotations": {WAKE_ANNOTATION: "w1"}}}
        )

    # Paced, as wakes arrive in production (a user opening a conversation): the latency of
    # one wake, not of a thousand queued behind each other.
    started = time.time()
    pending = []
    for index, name in enumerate(names):
        delay = started + index / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(wake(name)))
    await asyncio.gather(*pending)

    def new_pods() -> dict[str, float]:
        return {
            _pod_session(pods.bodies[p]): t
            for p, t in pods.added.items()
            if p not in before and p in pods.bodies
        }

    await wait_until(lambda: len(new_pods()) >= len(names), 300, "woken pods")
    created = new_pods()
    latencies = [(created[n] - asked[n]) * 1000 for n in names if n in created]
    await pods.stop()
    return {
        "sessions": len(names),
        "rate_per_second": rate,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "operator_wake_latency_sum_s": operator.metric("corral_wake_latency_seconds_sum"),
        "operator_wakes": operator.metric("corral_wake_latency_seconds_count"),
        "latencies_ms": latencies,
    }


async def activity_cost(
    client: KubeClient, operator: OperatorProcess, namespace: str, count: int, rounds: int = 3
) -> JSON:
    """CPU and API writes the operator spends on runners' activity reports.

    `count` LongRunning sessions; each round posts one report per session (alternating busy
    and idle, as at the start and end of a turn), from one client, as fast as it can."""
    import aiohttp

    pods = Watch("Pod", namespace)
    await pods.start(client)
    names = [f"a{i:05d}" for i in range(count)]
    await gather_limited(
        [
            client.create({**session_manifest(n), "metadata": {"name": n, "namespace": namespace}})
            for n in names
        ],
        CLIENT_CONCURRENCY,
    )
    await wait_until(lambda: len(pods.running) >= count, 120 + count * 0.2, "activity pods Running")
    pod_of = {pods.sessions[p]: p for p in pods.bodies}
    # Each report carries its pod's token, as a runner's does (the session uid is the owner's).
    token_of = {
        pods.sessions[p]: operator.activity_token(
            namespace, pods.sessions[p], body["metadata"]["ownerReferences"][0]["uid"], p
        )
        for p, body in pods.bodies.items()
    }
    await wait_settled(operator)
    assert operator.proc is not None
    cpu_before = _proc_times(operator.proc.pid)[0]
    writes_before = operator.metric("corral_kube_requests_total")
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:

        async def post(name: str, busy: bool) -> int:
            body = {
                "namespace": namespace,
                "name": name,
                "podName": pod_of[name],
                "busy": busy,
                "numTurns": 1,
            }
            headers = {"Authorization": f"Bearer {token_of[name]}"}
            async with http.post(
                f"{operator.url}/v1/activity", json=body, headers=headers
            ) as response:
                return response.status

        statuses: list[int] = []
        for round_ in range(rounds):
            statuses += await gather_limited([post(n, round_ % 2 == 0) for n in names], 32)
    elapsed = time.monotonic() - started
    await wait_settled(operator)  # the reconciles the reports queued
    cpu = _proc_times(operator.proc.pid)[0] - cpu_before
    writes = operator.metric("corral_kube_requests_total") - writes_before
    await pods.stop()
    reports = count * rounds
    return {
        "sessions": count,
        "reports": reports,
        "accepted": sum(1 for s in statuses if s == 202),
        "reports_per_second": round(reports / elapsed, 1),
        "operator_cpu_ms_per_report": round(1000 * cpu / reports, 3),
        "operator_requests_per_report": round(writes / reports, 3),
    }
