"""Activity reports are untrusted: per-pod tokens, bounded values, the operator's clock.

The token and validation tests are pure; the endpoint tests drive the operator's real
HTTP handler and store (no cluster) with forged reports and check nothing is applied.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from corral.api import runtime
from corral.api.activity import (
    MAX_COST_USD,
    MAX_TURNS,
    ActivityReport,
    activity_token,
    bearer_token,
    token_matches,
)
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller import metrics
from corral.controller.controller import Controller, RunSettings
from corral.controller.http import make_app
from corral.controller.lifecycle import Observed, Plan, decide
from corral.controller.queue import WorkQueue
from corral.render import render_pod

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
IDENTITY = ("team-a", "demo", "uid-1", "demo-abc123")


# --- tokens ------------------------------------------------------------------------------


def test_token_is_bound_to_every_part_of_the_identity_and_the_key() -> None:
    token = activity_token(KEY, *IDENTITY)
    assert token_matches([KEY], token, *IDENTITY)
    for i in range(len(IDENTITY)):
        other = list(IDENTITY)
        other[i] += "x"
        assert not token_matches([KEY], token, *other), f"part {i} is not bound"
    assert not token_matches([OTHER_KEY], token, *IDENTITY)
    # Parts are separated: moving a character between two fields is another identity.
    assert activity_token(KEY, "ab", "c", "u", "p") != activity_token(KEY, "a", "bc", "u", "p")


def test_any_listed_key_verifies_so_keys_can_rotate() -> None:
    old = activity_token(OTHER_KEY, *IDENTITY)
    assert token_matches([KEY, OTHER_KEY], old, *IDENTITY)
    assert not token_matches([KEY], old, *IDENTITY)
    assert not token_matches([], activity_token(KEY, *IDENTITY), *IDENTITY)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer ", None),
        ("Bearer " + "a" * 257, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# --- validation --------------------------------------------------------------------------

VALID: dict[str, Any] = {
    "namespace": "team-a",
    "name": "demo",
    "podName": "demo-abc123",
    "busy": False,
    "numTurns": 3,
    "totalCostUsd": 0.25,
    "agents": [{"name": "main", "state": "idle", "numTurns": 3, "totalCostUsd": 0.25}],
}


def raw(**changes: Any) -> str:
    return json.dumps({**VALID, **changes})


def test_a_normal_report_is_valid() -> None:
    report = ActivityReport.model_validate_json(raw())
    assert report.num_turns == 3 and report.agents[0].name == "main"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (raw().replace('"totalCostUsd": 0.25,', '"totalCostUsd": Infinity,'), "totalCostUsd"),
        (raw().replace('"totalCostUsd": 0.25,', '"totalCostUsd": NaN,'), "totalCostUsd"),
        (raw(totalCostUsd=1e308), "totalCostUsd"),
        (raw(totalCostUsd=-1), "totalCostUsd"),
        (raw(numTurns=2**63), "numTurns"),
        (raw(numTurns=MAX_TURNS + 1), "numTurns"),
        (raw(numTurns=-1), "numTurns"),
        (raw(agents=[{"name": "main", "numTurns": 2**64}]), "agents"),
        (raw(agents=[{"name": "main", "totalCostUsd": MAX_COST_USD * 2}]), "agents"),
        (raw(agents=[{"name": "main"}, {"name": "main"}]), "duplicate"),
        (raw(agents=[{"name": f"a{i}"} for i in range(17)]), "agents"),
        (raw(agents=[{"name": "Not A Label"}]), "agents"),
        (raw(namespace="x" * 64), "namespace"),
        (raw(name="../other"), "name"),
        (raw(sessionId="s" * 129), "sessionId"),
        (raw(busy="maybe"), "busy"),
        (raw(backgroundTasks=-1), "backgroundTasks"),
        (raw(backgroundTasks=runtime.MAX_BACKGROUND_TASKS + 1), "backgroundTasks"),
        (raw(scheduledWakeups=-1), "scheduledWakeups"),
        (raw(scheduledWakeups=runtime.MAX_SCHEDULED_WAKEUPS + 1), "scheduledWakeups"),
        (raw(nextDurableWakeup="2026-12-08T09:00:00"), "nextDurableWakeup"),  # no zone
        (raw(nextDurableWakeup="tomorrow at nine"), "nextDurableWakeup"),
    ],
)
def test_out_of_bounds_reports_are_refused(body: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ActivityReport.model_validate_json(body)
    assert field in str(caught.value)


def test_a_report_carries_no_time() -> None:
    """Whatever time a report claims is not part of it: the operator uses its own clock."""
    report = ActivityReport.model_validate_json(raw(lastActivityTime="9999-12-31T23:59:59Z"))
    assert "last_activity_time" not in report.model_dump()


# --- the endpoint ------------------------------------------------------------------------


class NoApi:
    """The endpoint must not call the API server."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected API call {name}")


def session_body(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": "team-a", "uid": uid, "generation": 1},
        "spec": {"pattern": "Hybrid", "idleTimeout": "5m"},
    }


@pytest.fixture(scope="module")
def controller() -> Iterator[Controller]:
    config = OperatorConfig(activity_url="http://op/v1/activity").with_activity_keys((KEY,))
    # One per test process: a Controller registers its session gauge with Prometheus.
    yield Controller(config, NoApi(), RunSettings(leader_election=False))  # type: ignore[arg-type]


@pytest.fixture
async def client(controller: Controller) -> AsyncIterator[TestClient[Any, Any]]:
    controller.store.sessions.clear()
    controller.store.children.clear()
    controller.store.activity.clear()
    controller.leading.set()
    async with TestClient(TestServer(make_app(controller))) as test_client:
        yield test_client


def add_session(controller: Controller, name: str, uid: str) -> tuple[str, str]:
    """A session and its live pod in the store; returns (pod name, that pod's token)."""
    controller.on_session("ADDED", session_body(name, uid))
    session = controller.store.sessions[("team-a", name)]
    pod = render_pod(session, controller.config, 1)
    pod["metadata"]["uid"] = f"pod-{uid}"
    controller.on_child("Pod", "ADDED", pod)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return pod["metadata"]["name"], env[runtime.ENV_ACTIVITY_TOKEN]


async def post(client: TestClient[Any, Any], body: dict[str, Any] | str, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, str) else json.dumps(body)
    response = await client.post("/v1/activity", data=data, headers=headers)
    return response.status


def rejected(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "corral_activity_reports_rejected_total", {"reason": reason}
    )
    return value or 0.0


async def test_the_pods_own_token_is_accepted_and_time_is_the_operators(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    pod, token = add_session(controller, "alpha", "uid-a")
    before = datetime.now(UTC)
    body = {**VALID, "name": "alpha", "podName": pod, "lastActivityTime": "9000-01-01T00:00:00Z"}
    assert await post(client, body, token) == 202
    activity = controller.store.activity[("team-a", "alpha")]
    assert before <= activity.last_activity <= datetime.now(UTC)
    assert activity.num_turns == 3


async def test_forged_reports_are_refused_and_change_nothing(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    alpha_pod, alpha_token = add_session(controller, "alpha", "uid-a")
    beta_pod, beta_token = add_session(controller, "beta", "uid-b")
    beta = {**VALID, "name": "beta", "podName": beta_pod, "busy": True}
    forbidden, unauthenticated, invalid = (
        rejected("forbidden"),
        rejected("unauthenticated"),
        rejected("invalid"),
    )

    # alpha's pod speaking for beta (its own token, or none, or a made-up one).
    assert await post(client, beta, alpha_token) == 403
    assert await post(client, beta, None) == 401
    assert await post(client, beta, "0" * 64) == 403
    # beta's token does not make alpha's pod name beta's.
    assert await post(client, {**beta, "podName": alpha_pod}, beta_token) == 403
    # beta's own token, with values that would wedge every later status patch.
    for changes in (
        {"totalCostUsd": 1e308},
        {"numTurns": 2**63},
        {"agents": [{"name": "main"}, {"name": "main"}]},
    ):
        assert await post(client, {**beta, **changes}, beta_token) == 400
    infinity = json.dumps(beta).replace('"totalCostUsd": 0.25,', '"totalCostUsd": Infinity,')
    assert await post(client, infinity, beta_token) == 400

    assert ("team-a", "beta") not in controller.store.activity
    assert rejected("forbidden") - forbidden == 3
    assert rejected("unauthenticated") - unauthenticated == 1
    assert rejected("invalid") - invalid == 4
    # And the one honest report is taken.
    assert await post(client, beta, beta_token) == 202
    assert controller.store.activity[("team-a", "beta")].busy is True


async def test_a_pod_that_is_not_the_sessions_is_unknown(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    _, token = add_session(controller, "alpha", "uid-a")
    session = controller.store.sessions[("team-a", "alpha")]
    ghost = render_pod(session, controller.config, 7)["metadata"]["name"]
    ghost_token = activity_token(KEY, "team-a", "alpha", "uid-a", ghost)
    body = {**VALID, "name": "alpha", "podName": ghost}
    assert await post(client, body, ghost_token) == 404
    # A session that does not exist is answered as a wrong token is: a token holder cannot
    # probe which sessions exist.
    assert await post(client, {**body, "name": "nobody"}, token) == 403
    assert await post(client, {**body, "name": "alpha"}, "0" * 64) == 403


async def test_a_pod_reporting_far_too_often_is_limited_not_written_each_time(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    from corral.controller.http import REPORTS_BURST

    pod, token = add_session(controller, "alpha", "uid-a")
    statuses = []
    for turns in range(REPORTS_BURST + 10):  # each report a new turn count: a reconcile each
        body = {**VALID, "name": "alpha", "podName": pod, "numTurns": turns}
        response = await client.post(
            "/v1/activity", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses.count(202) <= REPORTS_BURST + 1 and statuses.count(429) >= 9
    assert controller.store.activity[("team-a", "alpha")].num_turns < REPORTS_BURST + 10
    beta_pod, beta_token = add_session(controller, "beta", "uid-b")  # others: not limited
    beta = {**VALID, "name": "beta", "podName": beta_pod, "numTurns": 1}
    assert await post(client, beta, beta_token) == 202


async def test_an_accepted_report_makes_a_status_the_api_server_takes(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    pod, token = add_session(controller, "alpha", "uid-a")
    body = {**VALID, "name": "alpha", "podName": pod, "numTurns": MAX_TURNS}
    body["totalCostUsd"] = MAX_COST_USD
    assert await post(client, body, token) == 202
    key = ("team-a", "alpha")
    session: AgentSession = controller.store.sessions[key]
    observed = Observed(
        session=session,
        pods=controller.store.children_of(key).pod_views(),
        has_service=True,
        has_network_policy=True,
        has_pvc=True,
        now=datetime.now(UTC) + timedelta(seconds=1),
        activity=controller.store.activity[key],
    )
    patch = decide(observed, controller.config).status_patch or {}
    assert patch["numTurns"] == MAX_TURNS < 2**63
    assert math.isfinite(patch["totalCostUsd"])
    assert patch["lastActivityTime"] < "2100"


def test_each_pod_gets_its_own_token_only_with_an_activity_url() -> None:
    session = AgentSession.model_validate(session_body("demo", "uid-d"))
    config = OperatorConfig(activity_url="http://op/v1/activity").with_activity_keys((KEY,))

    def token_of(config: OperatorConfig, attempt: int) -> tuple[str, str | None]:
        pod = render_pod(session, config, attempt)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        return pod["metadata"]["name"], env.get(runtime.ENV_ACTIVITY_TOKEN)

    first, first_token = token_of(config, 1)
    second, second_token = token_of(config, 2)
    assert first_token == activity_token(KEY, "team-a", "demo", "uid-d", first)
    assert second_token == activity_token(KEY, "team-a", "demo", "uid-d", second)
    assert first_token != second_token
    assert token_of(OperatorConfig().with_activity_keys((KEY,)), 1)[1] is None


def test_the_runner_clamps_what_the_operator_would_refuse() -> None:
    """A runner never sends a report the operator must refuse (it would stop reporting)."""
    from corral.runner.activity import Identity, build_report
    from corral.runner.agent import AgentSnapshot, AgentState

    def agent(name: str, turns: int, cost: float) -> AgentSnapshot:
        return AgentSnapshot(
            background_tasks=runtime.MAX_BACKGROUND_TASKS,
            scheduled_wakeups=runtime.MAX_SCHEDULED_WAKEUPS,
            name=name,
            state=AgentState.BUSY,
            session_id=None,
            num_turns=turns,
            messages=0,
            total_cost_usd=cost,
            usage={},
            last_activity=None,
            last_error=None,
            restarts=0,
            cli_version="9" * 100,
        )

    who = Identity("team-a", "demo", "demo-abc123", "token")
    report = build_report(who, [agent("a", 2**70, math.inf), agent("b", 1, 2e9)])
    again = ActivityReport.model_validate_json(report.model_dump_json(by_alias=True))
    assert again.busy and again.num_turns == MAX_TURNS
    assert again.total_cost_usd == MAX_COST_USD
    assert [a.num_turns for a in again.agents] == [MAX_TURNS, 1]
    assert [a.total_cost_usd for a in again.agents] == [MAX_COST_USD, MAX_COST_USD]
    assert again.cli_version is not None and len(again.cli_version) == 64
    assert again.background_tasks == runtime.MAX_BACKGROUND_TASKS
    assert again.scheduled_wakeups == runtime.MAX_SCHEDULED_WAKEUPS


@pytest.mark.parametrize(
    ("hook_input", "count"),
    [
        ({"session_crons": [{"id": "a", "schedule": "41 5 * * *", "prompt": "tick"}]}, 1),
        ({"session_crons": []}, 0),
        ({}, 0),
        ({"session_crons": "every minute"}, 0),
        ({"session_crons": [{}] * (runtime.MAX_SCHEDULED_WAKEUPS + 5)}, None),
    ],
)
def test_pending_wakeups_come_from_the_stop_hook_bounded(
    hook_input: dict[str, Any], count: int | None
) -> None:
    """The CLI's Stop hook lists its session crons; the agent's process says so, so the
    count is bounded and anything but a list is none."""
    from corral.runner.agent import pending_wakeups

    expected = runtime.MAX_SCHEDULED_WAKEUPS if count is None else count
    assert pending_wakeups(hook_input) == expected


async def test_reports_in_quick_succession_make_one_reconcile_a_second_with_the_latest(
    client: TestClient[Any, Any], controller: Controller
) -> None:
    """A runner reports as each turn starts and ends, and an agent holding its pod's token
    can post its own up to the endpoint's limit: each report that moved the turn count was
    a reconcile and a status write. Now at most one a second, which takes the latest."""
    from corral.controller.controller import ACTIVITY_RECONCILE_SECONDS

    queue = controller.queue
    delays = asyncio.create_task(queue.run_delays())
    reconciled: list[int | None] = []

    async def workers_take_what_is_queued() -> None:
        while len(queue):
            key = await queue.get()
            activity = controller.store.activity.get(key)
            reconciled.append(activity.num_turns if activity else None)
            queue.done(key)

    try:
        pod, token = add_session(controller, "alpha", "uid-a")
        await workers_take_what_is_queued()  # the session's own first reconcile
        reconciled.clear()
        for turns in range(1, 21):  # quick turns, each started and ended: 40 reports
            for busy in (True, False):
                body = {**VALID, "name": "alpha", "podName": pod, "numTurns": turns, "busy": busy}
                assert await post(client, body, token) == 202
                await workers_take_what_is_queued()
        assert len(reconciled) <= 2, reconciled  # the first report, and maybe a second's
        await asyncio.sleep(ACTIVITY_RECONCILE_SECONDS + 0.3)
        await workers_take_what_is_queued()
        assert reconciled[-1] == 20  # the latest report reached a reconcile
        assert len(reconciled) <= 3, reconciled
    finally:
        delays.cancel()


async def test_a_report_held_behind_a_deadline_reaches_a_reconcile_when_the_deadline_moves(
    client: TestClient[Any, Any], controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report inside the one-a-second window waits for a reconcile already due; when that
    reconcile is a decision's deadline that a newer decision replaces (or that came first),
    a report after it must start a window of its own, not count on the replaced one."""
    from corral.controller.controller import ACTIVITY_RECONCILE_SECONDS

    seen: list[tuple[int, bool] | None] = []
    deadline: list[float | None] = [0.6]

    async def reconcile(key: tuple[str, str]) -> Plan:
        activity = controller.store.activity.get(key)
        seen.append((activity.num_turns, activity.busy) if activity else None)
        plan = Plan()
        if deadline[0] is not None:
            plan.requeue(deadline[0])
        return plan

    monkeypatch.setattr(controller.reconciler, "reconcile", reconcile)
    monkeypatch.setattr(controller, "queue", WorkQueue())  # its events: this test's loop
    controller.synced.set()
    tasks = [asyncio.create_task(controller.queue.run_delays())]
    tasks.append(asyncio.create_task(controller.worker()))

    async def report(turns: int, busy: bool) -> None:
        body = {**VALID, "name": "gamma", "podName": pod, "numTurns": turns, "busy": busy}
        assert await post(client, body, token) == 202
        await asyncio.sleep(0.05)  # the worker takes what is queued

    def counted(cause: str) -> float:
        labels = {"cause": cause, "outcome": "nothing"}  # the plans below ask for no write
        return metrics.REGISTRY.get_sample_value("corral_reconciles_total", labels) or 0.0

    before = {cause: counted(cause) for cause in ("change", "activity", "deadline")}
    try:
        pod, token = add_session(controller, "gamma", "uid-g")
        await asyncio.sleep(0.05)
        await report(1, True)  # the runner's first word: at once
        await report(1, False)  # the first change: at once, a window begins
        await report(2, True)  # in the window: waits for the deadline, 0.6 s away
        deadline[0] = None  # the deadline's reconcile asks for none
        await asyncio.sleep(0.7)
        assert seen[-1] == (2, True), seen
        await report(2, False)  # still inside the first window
        await asyncio.sleep(ACTIVITY_RECONCILE_SECONDS + 0.3)
        assert seen[-1] == (2, False), seen
        # The session's add; two reports at once, the third at the deadline, the last in a
        # window of its own.
        counts = {cause: counted(cause) - before[cause] for cause in before}
        assert counts == {"change": 1, "activity": 3, "deadline": 1}, (counts, seen)
    finally:
        for task in tasks:
            task.cancel()
        controller.synced.clear()
