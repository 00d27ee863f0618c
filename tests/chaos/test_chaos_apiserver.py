"""Scenario 1: kube-apiserver SIGKILLed and restarted, during a create burst and during idle
scale-downs. Nothing may be lost or doubled: every session converges to its phase, one pod
per awake session and none per sleeping one (never two at once, never a second one), no
orphan pod, every volume the same object; figures go to docs/benchmarks/chaos.json."""

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


def test_apiserver_killed_during_a_burst_and_during_scale_downs(world: World) -> None:
    operator = world.operator("chaos-apiserver")
    operator.wait_leader()

    def kill() -> None:
        world.plane.kill("kube-apiserver")

    def restart() -> float:
        return world.plane.start("kube-apiserver")

    with PodHistory(world.core, world.namespace) as history:
        start_sleepers(world, operator)
        burst = burst_with_fault(world, operator, kill, restart, DOWN_SECONDS)
        scale = scale_downs_with_fault(world, operator, kill, restart, DOWN_SECONDS)
    checks = assert_nothing_doubled(world, history)
    load = {"sessions": len(world.load.all), **world.load.counts()}
    record_figures("1a apiserver SIGKILL during create burst", {**load, **burst, **checks})
    record_figures("1b apiserver SIGKILL during idle scale-downs", {**load, **scale, **checks})
