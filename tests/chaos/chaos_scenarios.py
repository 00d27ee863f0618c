"""Two fault windows shared by the kill scenarios (API server, etcd): a create burst, and
idle scale-downs. `fault` takes the control plane down, `restore` brings it back and
returns when the API server answers again."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from chaos_support import OperatorFigures
from chaos_world import World

from corral.render.meta import SESSION_LABEL
from corral.testing.kube import wait_for
from corral.testing.load import (
    Expected,
    PodHistory,
    claim_uids,
    phase_of,
    retrying,
    runner_pods,
)
from corral.testing.operator import OperatorProcess

Fault = Callable[[], None]
Restore = Callable[[], float]


def by_index(names: list[str]) -> list[str]:
    """Interleave the roles, in the order Load.mixed numbered them."""
    return sorted(names, key=lambda name: int(name.rsplit("-", 1)[1]))


def scaled_down_events(world: World) -> list[Any]:
    """The ScaledDown Events of the world's sessions, as the API server holds them now."""
    return list(
        retrying(
            lambda: world.core.list_namespaced_event(
                world.namespace,
                field_selector="involvedObject.kind=AgentSession,reason=ScaledDown",
            )
        ).items
    )


def scaled_down_counts(world: World) -> Counter[str]:
    return Counter(event.involved_object.name for event in scaled_down_events(world))


def start_sleepers(world: World, operator: OperatorProcess) -> None:
    """The sessions to be sent to sleep later: created and running before any fault."""
    for future in world.create(world.load.sleepers):
        future.result()
    world.converge(Expected(awake=set(world.load.sleepers), asleep=set()))


def burst_with_fault(
    world: World,
    operator: OperatorProcess,
    fault: Fault,
    restore: Restore,
    down_seconds: float,
    kill_at_fraction: float = 0.3,
) -> dict[str, Any]:
    """Create every awake session; take the control plane down once `kill_at_fraction` of
    them have a pod; bring it back after `down_seconds`; wait until every session converged."""
    load = world.load
    burst = by_index(load.awake)
    figures = OperatorFigures(operator).start()
    started = time.monotonic()
    creations = world.create(burst)
    wanted = int(len(burst) * kill_at_fraction)

    def progress() -> bool:
        return len(runner_pods(world.core, world.namespace)) - len(load.sleepers) >= wanted

    wait_for(progress, timeout=180, interval=0.1, what=f"{wanted} pods of the burst")
    claims = claim_uids(world.core, world.namespace)
    with_pod = len(runner_pods(world.core, world.namespace)) - len(load.sleepers)
    created = sum(f.done() for f in creations)
    fault()
    down = time.monotonic()
    time.sleep(down_seconds)
    ready_seconds = restore()
    back = time.monotonic()
    for future in creations:
        future.result()
    expected = Expected(awake=set(load.all), asleep=set(), claims=claims)
    converge = world.converge(expected)
    result = {
        "fault_at_seconds_into_burst": round(down - started, 1),
        "at_fault": f"{created}/{len(burst)} sessions created, {with_pod} with a pod",
        "down_seconds": round(back - down, 1),
        "api_ready_after_restart_seconds": round(ready_seconds, 1),
        "operator_done_after_restart_seconds": converge["operator_done"],
        "converged_after_restart_seconds": converge["converged"],
        "kwok_resyncs": converge["kwok_resyncs"],
        "burst_total_seconds": round(time.monotonic() - started, 1),
        **figures.since(),
    }
    time.sleep(2)  # and nothing more happens
    return result


def scale_downs_with_fault(
    world: World,
    operator: OperatorProcess,
    fault: Fault,
    restore: Restore,
    down_seconds: float,
) -> dict[str, Any]:
    """Shorten every sleeper's idleTimeout to 1s, one every 50 ms; take the control plane
    down once the first has been scaled down; back after `down_seconds`; converge."""
    load = world.load
    claims = claim_uids(world.core, world.namespace)
    figures = OperatorFigures(operator).start()

    def shorten() -> None:
        for name in load.sleepers:
            world.sessions.patch(name, {"spec": {"idleTimeout": "1s"}})
            time.sleep(0.05)

    patcher = threading.Thread(target=shorten, daemon=True)
    started = time.monotonic()
    patcher.start()

    def sleeper_pods() -> int:
        pods = runner_pods(world.core, world.namespace)
        sessions = {(p.metadata.labels or {}).get(SESSION_LABEL) for p in pods}
        return len(sessions & set(load.sleepers))

    wait_for(
        lambda: sleeper_pods() < len(load.sleepers),
        timeout=60,
        interval=0.1,
        what="the first scale-down",
    )
    phases = [phase_of(s) for s in world.sessions.list() if s["metadata"]["name"] in load.sleepers]
    idle_at_fault = phases.count("Idle")
    fault()
    down = time.monotonic()
    time.sleep(down_seconds)
    ready_seconds = restore()
    back = time.monotonic()
    patcher.join(180)
    expected = Expected(awake=set(load.awake), asleep=set(load.sleepers), claims=claims)
    converge = world.converge(expected)
    result = {
        "fault_at_seconds_into_scale_downs": round(down - started, 1),
        "at_fault": f"{idle_at_fault}/{len(load.sleepers)} sleepers Idle",
        "down_seconds": round(back - down, 1),
        "api_ready_after_restart_seconds": round(ready_seconds, 1),
        "operator_done_after_restart_seconds": converge["operator_done"],
        "converged_after_restart_seconds": converge["converged"],
        "kwok_resyncs": converge["kwok_resyncs"],
        **figures.since(),
    }
    time.sleep(2)
    return result


def story_of(world: World, sessions: list[str], log_lines: int = 40) -> str:
    """What the cluster and the operators say of these sessions: each one's Events and its
    pods' Events (oldest first), and the operators' log lines naming it (for a failure's
    message: a second pod's cause is in them, and the run that shows it may be a CI's)."""
    found = retrying(lambda: world.core.list_namespaced_event(world.namespace)).items
    lines = [
        line
        for operator in world.operators
        for line in operator.log_path.read_text(errors="replace").splitlines()
    ]

    def about(event: Any, name: str) -> bool:
        target = event.involved_object.name or ""
        return target == name or target.startswith(f"{name}-")  # the session or its pods

    parts = []
    for name in sessions:
        mine = sorted(
            (e for e in found if about(e, name)),
            key=lambda e: str(e.last_timestamp or e.event_time or ""),
        )
        events = [
            f"{e.last_timestamp or e.event_time} {e.involved_object.kind}/"
            f"{e.involved_object.name} {e.reason}: {e.message}"
            for e in mine
        ]
        logs = [line for line in lines if f'"{name}"' in line][-log_lines:]
        parts.append(f"{name} events: {events}; operator log: {logs}")
    return "\n".join(parts)


def assert_nothing_doubled(world: World, history: PodHistory) -> dict[str, int]:
    """No session ever had two pods at once or a second pod, nor was scaled down twice."""
    load = world.load
    duplicates = history.duplicates()
    assert not duplicates, (
        f"sessions with two pods at once: {duplicates}: {history.described(duplicates)}\n"
        + story_of(world, sorted(duplicates))
    )
    second = {n: history.pods_ever(n) for n in load.all if history.pods_ever(n) != 1}
    assert not second, (
        f"sessions whose pod was made more than once (or never): {second}\n"
        + story_of(world, sorted(second))
    )
    counts = scaled_down_counts(world)
    twice = {name: n for name, n in counts.items() if n > 1}
    assert not twice, f"scaled down more than once: {twice}"
    assert set(counts) <= set(load.sleepers), counts
    return {"duplicate_pods": 0, "second_pods": 0, "scaled_down_twice": 0}
