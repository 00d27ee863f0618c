"""The start-up CPU boost: rendered as a CPU limit above the request, lowered once (render.cpu_boost
and lifecycle's settle_cpu)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from test_lifecycle import CONFIG, T0, World, make_pod, make_session, observe

from corral.config import OperatorConfig
from corral.controller.lifecycle import BOOST_AFTER_READY_SECONDS, Activity, decide
from corral.controller.pods import pod_view, resize_supported
from corral.render import render_pod, restart_hash
from corral.render.cpu_boost import (
    millicores,
    needs_settling,
    settled_cpu_limit,
    startup_cpu_limit,
)

BOOST = CONFIG.model_copy(update={"startup_cpu_limit": "2"})


def resources(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return dict(container["resources"])


def qos_class(requests: dict[str, str], limits: dict[str, str]) -> str:
    """Kubernetes' rule for one container: Guaranteed when CPU and memory requests equal
    their limits, else Burstable (requests are always set here)."""
    same = all(
        millicores(requests[r]) == millicores(limits[r]) for r in ("cpu", "memory") if r in limits
    )
    return "Guaranteed" if same else "Burstable"


def test_a_boosted_pod_starts_burstable_with_the_sessions_request() -> None:
    session = make_session("LongRunning", resources={"cpu": "250m", "memory": "1Gi"})
    res = resources(render_pod(session, BOOST, 1))
    assert res["requests"]["cpu"] == "250m"  # scheduling and fair share unchanged
    assert res["limits"]["cpu"] == "2000m"
    assert res["limits"]["memory"] == res["requests"]["memory"] == "1Gi"
    assert qos_class(res["requests"], res["limits"]) == "Burstable"


def test_the_settled_limit_keeps_the_pod_burstable() -> None:
    """A resize may not change the QoS class: the settled limit stays a millicore above."""
    session = make_session("LongRunning", resources={"cpu": "250m"})
    assert settled_cpu_limit(session.spec) == "251m"
    res = resources(render_pod(session, BOOST, 1))
    settled = {**res["limits"], "cpu": settled_cpu_limit(session.spec)}
    assert qos_class(res["requests"], settled) == "Burstable"


@pytest.mark.parametrize(
    ("setting", "cpu", "opt_out"),
    [
        (None, "250m", None),  # off
        ("0", "250m", None),  # off
        ("2", "2", None),  # the session already has as much
        ("2", "1999m", None),  # less than the settled limit's headroom above
        ("2", "250m", False),  # the session opts out
    ],
)
def test_no_boost_keeps_requests_equal_to_limits(
    setting: str | None, cpu: str, opt_out: bool | None
) -> None:
    config = CONFIG.model_copy(update={"startup_cpu_limit": setting})
    res_spec: dict[str, Any] = {"cpu": cpu}
    if opt_out is not None:
        res_spec["startupBoost"] = opt_out
    session = make_session("Hybrid", resources=res_spec)
    assert startup_cpu_limit(session.spec, config) is None
    res = resources(render_pod(session, config, 1))
    assert res["requests"] == res["limits"]
    assert qos_class(res["requests"], res["limits"]) == "Guaranteed"


def test_an_empty_setting_turns_the_boost_off() -> None:
    assert OperatorConfig.model_validate({"startupCpuLimit": ""}).startup_cpu_limit is None
    assert OperatorConfig().startup_cpu_limit == "2"


def test_opting_out_does_not_replace_the_pod() -> None:
    """startupBoost says how a pod starts, not what it runs with: no new pod for it."""
    plain = make_session("Hybrid")
    opted = make_session("Hybrid", resources={"startupBoost": False})
    assert restart_hash(plain.spec) == restart_hash(opted.spec)


def test_needs_settling_only_ever_lowers() -> None:
    spec = make_session("LongRunning", resources={"cpu": "250m"}).spec
    assert needs_settling(Decimal(2), spec)
    assert not needs_settling(Decimal("0.251"), spec)  # settled
    assert not needs_settling(Decimal("0.25"), spec)  # made without the boost (Guaranteed)
    assert not needs_settling(None, spec)


def boosted_pod(ready: bool, pattern: str = "LongRunning", cpu: str = "250m") -> Any:
    session = make_session(pattern, resources={"cpu": cpu})
    phase = "Running" if ready else "Pending"
    return session, make_pod(session, 1, phase=phase, ready=ready, config=BOOST)


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning", "Hybrid", "Shared"])
def test_a_ready_boosted_pod_is_resized_to_the_sessions_limit(pattern: str) -> None:
    """Also what an operator restart finds: a pod still boosted while Ready is fixed."""
    session, pod = boosted_pod(ready=True, pattern=pattern)
    assert pod.cpu_limit == 2
    plan = decide(observe(session, [pod]), BOOST)
    patch = {"spec": {"containers": [{"name": "runner", "resources": {"limits": {"cpu": "251m"}}}]}}
    assert plan.resize_pods == [(pod.name, patch)]


def test_a_starting_pod_keeps_its_boost() -> None:
    session, pod = boosted_pod(ready=False)
    assert decide(observe(session, [pod]), BOOST).resize_pods == []


def test_the_runners_first_report_does_not_end_the_boost() -> None:
    """The pod's Ready does: a woken runner's first answer still runs boosted."""
    session, pod = boosted_pod(ready=False)
    own = Activity(last_activity=T0, busy=True, pod_name=pod.name)
    assert not decide(observe(session, [pod], activity=own), BOOST).resize_pods


def test_the_boost_outlasts_ready_by_a_second_or_two() -> None:
    """Ready now comes as the runner turns ready, with the woken runner's first answer
    still running: the resize waits until Ready's whole-second time plus 2 s."""
    session = make_session("LongRunning", resources={"cpu": "250m"})
    ready_at = T0.replace(microsecond=0)  # as the API writes it: whole seconds
    pod = make_pod(session, 1, phase="Running", ready=True, config=BOOST, ready_at=ready_at)
    now = ready_at + timedelta(seconds=0.7)
    plan = decide(observe(session, [pod], now=now), BOOST)
    assert plan.resize_pods == []
    assert plan.requeue_after == pytest.approx(BOOST_AFTER_READY_SECONDS - 0.7)
    later = ready_at + timedelta(seconds=BOOST_AFTER_READY_SECONDS)
    assert [name for name, _ in decide(observe(session, [pod], now=later), BOOST).resize_pods] == [
        pod.name
    ]


def test_a_settled_or_unboosted_pod_gets_no_write() -> None:
    session, pod = boosted_pod(ready=True)
    settled = replace(pod, cpu_limit=Decimal("0.251"))
    assert decide(observe(session, [settled]), BOOST).resize_pods == []
    plain = make_pod(session, 1, ready=True)  # rendered without the boost: Guaranteed
    assert plain.cpu_limit == Decimal("0.25")
    assert decide(observe(session, [plain]), BOOST).resize_pods == []


def test_a_long_running_session_is_resized_once_and_then_rests() -> None:
    world = World(make_session("LongRunning", resources={"cpu": "250m"}), config=BOOST)
    world.settle()
    (name,) = world.pods_created
    assert world.pods[name].cpu_limit == 2  # created boosted
    world.pods[name] = replace(world.pods[name], phase="Running", ready=True)
    resizes = [world.step().resize_pods for _ in range(3)]
    assert [len(r) for r in resizes] == [1, 0, 0]
    assert world.pods[name].cpu_limit == Decimal("0.251")
    world.settle()


def test_a_pod_on_a_node_that_cannot_resize_gets_no_write() -> None:
    """The API server would refuse it (422): no request, after an operator restart too."""
    session, pod = boosted_pod(ready=True)
    cannot = replace(pod, resizable=False)
    assert decide(observe(session, [cannot]), BOOST).resize_pods == []


RUNNING = {"running": {"startedAt": "2026-12-02T10:00:00Z"}}


@pytest.mark.parametrize(
    ("statuses", "supported"),
    [
        # A kubelet of 1.33 or later reports the running container's resources.
        ([{"name": "runner", "state": RUNNING, "resources": {"limits": {"cpu": "2"}}}], True),
        # KWOK, or an older kubelet: running, but no resources reported.
        ([{"name": "runner", "state": RUNNING}], False),
        # Nothing running yet: the API server cannot tell, and takes the resize.
        ([{"name": "runner", "state": {"waiting": {"reason": "ContainerCreating"}}}], True),
        ([], True),
    ],
)
def test_resize_support_is_read_from_the_pods_status_as_the_api_server_does(
    statuses: list[dict[str, Any]], supported: bool
) -> None:
    assert resize_supported({"containerStatuses": statuses}) is supported
    body = {"metadata": {"name": "p", "uid": "u"}, "status": {"containerStatuses": statuses}}
    assert pod_view(body).resizable is supported
