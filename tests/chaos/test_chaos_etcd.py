"""Scenario 2: etcd SIGKILLed and restarted with its data kept, during a create burst and
during idle scale-downs. The API server stays up and answers errors (or hangs) meanwhile.
The same checks as scenario 1: nothing lost, nothing doubled; figures in
docs/benchmarks/chaos.json."""

from __future__ import annotations

import pytest
from chaos_scenarios import (
    assert_nothing_doubled,
    burst_with_fault,
    scale_downs_with_fault,
    start_sleepers,
)
from chaos_support import record_figures
from chaos_world import World

from corral.testing.load import PodHistory

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
DOWN_SECONDS = 10.0


def test_etcd_killed_during_a_burst_and_during_scale_downs(world: World) -> None:
    operator = world.operator("chaos-etcd")
    operator.wait_leader()

    def kill() -> None:
        world.plane.kill("etcd")

    def restart() -> float:
        return world.plane.start("etcd") + world.plane.wait_apiserver_ready()

    with PodHistory(world.core, world.namespace) as history:
        start_sleepers(world, operator)
        burst = burst_with_fault(world, operator, kill, restart, DOWN_SECONDS)
        scale = scale_downs_with_fault(world, operator, kill, restart, DOWN_SECONDS)
    checks = assert_nothing_doubled(world, history)
    load = {"sessions": len(world.load.all), **world.load.counts()}
    record_figures("2a etcd SIGKILL during create burst", {**load, **burst, **checks})
    record_figures("2b etcd SIGKILL during idle scale-downs", {**load, **scale, **checks})
