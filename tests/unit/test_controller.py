"""The controller's path from watch events to the store and to reconciles, without a cluster:
deletions found by a relist, deletes that find nothing, and losing leadership mid-reconcile."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scripted_api import GONE, ScriptedApi, run_until

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller import controller as controller_module
from corral.controller import store as store_module
from corral.controller.controller import Controller, RunSettings
from corral.controller.drift import live_spec
from corral.controller.lifecycle import decide, timestamp
from corral.controller.pods import SELECTED_NODE_ANNOTATION, pod_view
from corral.kube.client import ApiError, KubeClient
from corral.kube.informer import Informer
from corral.render import (
    network_policy_name,
    pvc_name,
    render_pod,
    render_pvc,
    render_service,
    service_name,
)

JSON = dict[str, Any]
KEY = ("team-a", "demo")
LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


class FakeKube(KubeClient):
    """The API server as far as one reconcile needs it: status patches merge into the
    session, pod deletes answer 404 (the pod is already gone), the rest succeeds."""

    def __init__(self, session: JSON) -> None:  # no HTTP session: nothing leaves the process
        self.session = session
        self.calls: list[tuple[str, str]] = []

    async def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        accept: str | None = None,
        lean: bool = False,
    ) -> JSON:
        self.calls.append((method, path))
        if method == "DELETE" and "/pods/" in path:
            raise ApiError(404, "NotFound", f'pods "{path.rsplit("/", 1)[1]}" not found')
        if method == "PATCH" and path.endswith("/status"):
            assert body is not None
            status = self.session.setdefault("status", {})
            for name, value in body["status"].items():
                if value is None:
                    status.pop(name, None)
                else:
                    status[name] = value
            meta = self.session["metadata"]
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
            return copy.deepcopy(self.session)
        return copy.deepcopy(body or {})


@pytest.fixture
def controller_for(
    monkeypatch: pytest.MonkeyPatch, config: OperatorConfig
) -> Callable[[JSON], Controller]:
    # One Prometheus collector per process; these tests make several controllers.
    monkeypatch.setattr(controller_module.metrics, "register_sessions", lambda _: None)
    monkeypatch.delenv("POD_NAME", raising=False)

    def make(session: JSON) -> Controller:
        return Controller(config, FakeKube(session), RunSettings(leader_election=False))

    return make


def session_body(session: AgentSession, **status: Any) -> JSON:
    body = session.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["metadata"]["resourceVersion"] = "10"
    body["status"] = status
    return body


def running_pod(session: AgentSession, config: OperatorConfig, started: datetime) -> JSON:
    body = render_pod(session, config, attempt=1)
    body["metadata"].update(
        uid="pod-uid-1", resourceVersion="11", creationTimestamp=timestamp(started)
    )
    body["status"] = {
        "phase": "Running",
        "startTime": timestamp(started),
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return body


def add_other_children(controller: Controller, session: AgentSession) -> None:
    for kind, name in (
        ("Service", service_name(session)),
        ("NetworkPolicy", network_policy_name(session)),
        ("PersistentVolumeClaim", pvc_name(session)),
    ):
        controller.store.put_named_child(KEY, kind, name, deleted=False)


@pytest.fixture
def config() -> OperatorConfig:
    """Runners get a key from the operator's environment: sessions without one never start."""
    return OperatorConfig(
        runner_env={runtime.ENV_API_KEY: "sk-ant-test"},
        activity_url="http://corral.corral-system.svc:8081/v1/activity",
    )


def pods_to_create(controller: Controller, config: OperatorConfig) -> list[str]:
    observed = controller.reconciler.observe(KEY)
    assert observed is not None
    plan = decide(observed, config)
    if plan.confirm_gone:  # the reconciler looks the pod up: here, the store is right
        plan = decide(replace(observed, pod_gone=plan.confirm_gone), config)
    return [m["metadata"]["name"] for m in plan.create if m["kind"] == "Pod"]


async def test_a_pod_deleted_while_the_watch_was_down_is_recreated(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """Fix: the relist reported the vanished pod as a stub without ownerReferences, the
    controller dropped it, and the LongRunning session kept a pod that no longer existed."""
    session = make_session("LongRunning")
    pod = running_pod(session, config, LONG_AGO)
    body = session_body(session, phase="Running", podName=pod["metadata"]["name"], attempts=1)
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    add_other_children(controller, session)
    # Listed, then the watch ends with 410 Gone; meanwhile the pod was deleted.
    api = ScriptedApi(lists=[[pod], []], watches=[([], GONE)])
    api.release.clear()
    informer = Informer(api, "Pod", "sel", controller._child_handler("Pod"))  # type: ignore[arg-type]

    def listed_then_relisted() -> bool:
        if api.release.is_set():
            return len(api.watch_versions) >= 2
        if api.watch_versions:  # listed, watching
            assert pods_to_create(controller, config) == []  # the pod is there
            api.release.set()
        return False

    await run_until(informer, listed_then_relisted)
    assert controller.store.children_of(KEY).pods == {}
    assert len(pods_to_create(controller, config)) == 1


async def test_a_hybrid_session_whose_idle_delete_found_no_pod_wakes(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """Fix: a 404 on the idle scale-down's delete left the pod marked "deleting" for ever,
    and a wake waited on it for ever. A 404 means deleted."""
    session = make_session("Hybrid", idleTimeout="1m")
    pod = running_pod(session, config, LONG_AGO)
    body = session_body(
        session,
        phase="Running",
        podName=pod["metadata"]["name"],
        attempts=1,
        lastActivityTime=timestamp(LONG_AGO),
    )
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    controller.on_child("Pod", "ADDED", pod)
    add_other_children(controller, session)

    plan = await controller.reconciler.reconcile(KEY)
    assert plan is not None and [d.reason for d in plan.delete_pods] == ["IdleTimeout"]
    assert ("DELETE", f"/api/v1/namespaces/team-a/pods/{pod['metadata']['name']}") in (
        controller.client.calls  # type: ignore[attr-defined]
    )
    assert controller.store.sessions[KEY].status.phase == "Idle"

    woken = copy.deepcopy(controller.client.session)  # type: ignore[attr-defined]
    woken["metadata"]["annotations"] = {"corral.dev/wake": "1"}
    woken["metadata"]["resourceVersion"] = "100"
    controller.on_session("MODIFIED", woken)
    assert len(pods_to_create(controller, config)) == 1


class BlockingReconciler:
    """A reconcile that waits for ever (a slow API server), and says if it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def reconcile(self, key: tuple[str, str]) -> None:
        self.calls += 1
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_losing_leadership_cancels_reconciles_in_flight(
    controller_for: Callable[[JSON], Controller],
) -> None:
    """Fix: a deposed leader's running reconciles went on writing beside the new leader's."""
    controller = controller_for({})
    reconciler = BlockingReconciler()
    controller.reconciler = reconciler  # type: ignore[assignment]
    controller.synced.set()
    worker = asyncio.create_task(controller.worker())
    try:
        controller.start_leading()
        controller.queue.add(KEY)
        async with asyncio.timeout(5):
            await reconciler.started.wait()
        controller.stop_leading()
        async with asyncio.timeout(5):
            await reconciler.cancelled.wait()
        # The worker survives and serves the next term.
        reconciler.started.clear()
        controller.start_leading()
        controller.queue.add(KEY)
        async with asyncio.timeout(5):
            await reconciler.started.wait()
        assert reconciler.calls == 2
        assert not worker.done()
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_new_leader_tells_decisions_when_it_began_to_lead(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
) -> None:
    body = session_body(make_session("Hybrid"))
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    before = datetime.now(UTC)
    controller.start_leading()
    observed = controller.reconciler.observe(KEY)
    assert observed is not None and observed.leading_since is not None
    assert before <= observed.leading_since <= datetime.now(UTC)
    controller.stop_leading()
    observed = controller.reconciler.observe(KEY)
    assert observed is not None and observed.leading_since is None


async def test_a_session_deleted_while_the_watch_was_down_is_forgotten(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """Fix: kopf's relist after 410 Gone never reports the sessions deleted meanwhile; the
    session stayed in the store and every reconcile gave it a new pod (found by
    tests/chaos/test_chaos_watch_expiry.py). A full list now forgets it, but keeps a
    session newer than the list and takes in one the store lacks."""
    gone = make_session("LongRunning")
    body = session_body(gone, phase="Running")
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    newer = copy.deepcopy(body)
    newer["metadata"].update(name="made-after-the-list", uid="uid-new", resourceVersion="200")
    controller.on_session("ADDED", newer)
    listed = copy.deepcopy(body)
    listed["metadata"].update(name="listed", uid="uid-listed", resourceVersion="50")
    del listed["apiVersion"], listed["kind"]  # as list items may come
    controller.apply_session_list([listed], version=100)
    assert set(controller.store.sessions) == {
        (KEY[0], "made-after-the-list"),
        (KEY[0], "listed"),
    }
    # Nothing is made for the forgotten one.
    assert controller.reconciler.observe(KEY) is None


async def test_reconciles_wait_while_the_sessions_are_listed_again(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
) -> None:
    session = make_session("LongRunning")
    body = session_body(session, phase="Running")
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    listing = asyncio.Event()

    async def slow_snapshot() -> tuple[list[JSON], int]:
        await listing.wait()
        return [], 100  # the session is gone

    controller._session_lister.snapshot = slow_snapshot  # type: ignore[method-assign]
    controller.synced.set()
    controller.leading.set()
    controller.sessions_may_be_stale()
    worker = asyncio.create_task(controller.worker())
    try:
        await asyncio.sleep(0.2)
        kube = controller.client
        assert isinstance(kube, FakeKube)
        assert kube.calls == []  # the queued session waits for the list
        listing.set()
        await asyncio.wait_for(controller.sessions_current.wait(), 5)
        await asyncio.sleep(0.2)
        assert kube.calls == [] and not controller.store.sessions
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_a_stored_session_the_models_refuse_gets_a_status_naming_the_field(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
) -> None:
    """Fix: a session the API server stored but the models refuse (found by
    tests/chaos/test_chaos_bad_input.py: Go's `\\S` took a vertical tab) was only logged, so
    it never got a status. Now SpecAccepted and Ready say which field, with one Warning Event
    per generation, and nothing is written again while it stays the same."""
    body = session_body(make_session("LongRunning"))
    body["metadata"]["generation"] = 3
    body["spec"]["image"] = "runner\x0b:1"
    controller = controller_for(body)
    kube = controller.client
    assert isinstance(kube, FakeKube)
    controller.on_session("ADDED", copy.deepcopy(body))
    assert await controller.reconciler.reconcile(KEY) is None
    conditions = {c["type"]: c for c in kube.session["status"]["conditions"]}
    for type_ in ("SpecAccepted", "Ready"):
        assert conditions[type_]["status"] == "False"
        assert conditions[type_]["reason"] == "SpecUnreadable"
        assert conditions[type_]["observedGeneration"] == 3
        assert "spec.image: String should match pattern" in conditions[type_]["message"]
    posted = [path for method, path in kube.calls if method == "POST"]
    assert len(posted) == 1 and posted[0].endswith("/events")
    # Reconciled again before the watch shows the write (a child event): nothing more.
    kube.calls.clear()
    await controller.reconciler.reconcile(KEY)
    assert kube.calls == []
    # The status write comes back through the watch: nothing more to say.
    kube.calls.clear()
    controller.on_session("MODIFIED", copy.deepcopy(kube.session))
    await controller.reconciler.reconcile(KEY)
    assert kube.calls == []
    # Fixed: an ordinary session again.
    fixed = copy.deepcopy(kube.session)
    fixed["spec"]["image"] = "runner:1"
    fixed["metadata"]["resourceVersion"] = "99"
    controller.on_session("MODIFIED", fixed)
    assert KEY not in controller.store.unreadable
    assert controller.reconciler.observe(KEY) is not None


async def test_a_hybrid_pod_held_by_its_volumes_missing_node_names_that_node(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """The claim's selected-node annotation, from its watch event, is named in the status
    of a pod the scheduler cannot place because of the volume (its node is gone)."""
    session = make_session("Hybrid", idleTimeout="1h")
    now = datetime.now(UTC)
    pod = running_pod(session, config, now)
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 node(s) didn't satisfy plugin(s) "
                "[VolumeBinding].",
            }
        ],
    }
    body = session_body(
        session,
        phase="Running",
        podName=pod["metadata"]["name"],
        attempts=1,
        lastActivityTime=timestamp(now),
    )
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    controller.on_child("Pod", "ADDED", pod)
    add_other_children(controller, session)
    claim = render_pvc(session, config)
    claim["metadata"]["annotations"] = {SELECTED_NODE_ANNOTATION: "node-a"}
    controller.on_child("PersistentVolumeClaim", "MODIFIED", claim)
    observed = controller.reconciler.observe(KEY)
    assert observed is not None and observed.volume_node == "node-a"

    plan = await controller.reconciler.reconcile(KEY)
    assert plan is not None and plan.delete_pods == []
    ready = next(c for c in plan.status_patch["conditions"] if c["type"] == "Ready")  # type: ignore[index]
    assert ready["reason"] == "VolumeNodeUnavailable"
    assert "waiting for node node-a" in ready["message"], ready["message"]

    # The claim gone (deleted), its node is forgotten with it.
    controller.on_child("PersistentVolumeClaim", "DELETED", claim)
    observed = controller.reconciler.observe(KEY)
    assert observed is not None and observed.volume_node is None


async def started_pod_seen(
    controller_for: Callable[[JSON], Controller], session: AgentSession, config: OperatorConfig
) -> Controller:
    """A Pending session whose pod the watch shows Running: its reconcile writes a status."""
    pod = running_pod(session, config, LONG_AGO)
    body = session_body(session, phase="Pending", podName=pod["metadata"]["name"], attempts=1)
    body["metadata"]["generation"] = 1  # as the API server sets it
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    add_other_children(controller, session)
    controller.on_child("Pod", "ADDED", pod)
    # What the watch events queued: taken, as a worker would.
    assert await controller.queue.get() == KEY
    controller.queue.done(KEY)
    assert len(controller.queue) == 0
    return controller


async def test_a_status_write_that_raced_an_edit_is_reconciled(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """A wake annotation (or a spec change) made while the operator wrote the status comes
    back in the write's answer before the watch shows it: that version is not the
    operator's alone, and its echo is reconciled."""
    controller = await started_pod_seen(controller_for, make_session("LongRunning"), config)
    api: FakeKube = controller.client  # type: ignore[assignment]
    api.session["metadata"]["annotations"] = {runtime.WAKE_ANNOTATION: "now"}
    seen = await reconciles_of_one_add(controller)
    # The write's echo changes nothing held: the worker decided again on the write's answer.
    controller.on_session("MODIFIED", copy.deepcopy(api.session))
    assert len(controller.queue) == 0
    assert [annotations.get(runtime.WAKE_ANNOTATION) for annotations in seen] == [None, "now"]


async def reconciles_of_one_add(controller: Controller) -> list[dict[str, str]]:
    """Queue KEY once and let a worker run until the queue is empty; the annotations of the
    session each reconcile decided on."""
    seen: list[dict[str, str]] = []
    reconcile = controller.reconciler.reconcile

    async def recording(key: tuple[str, str]) -> Any:
        seen.append(dict(controller.store.sessions[key].metadata.annotations))
        return await reconcile(key)

    controller.reconciler.reconcile = recording  # type: ignore[method-assign]
    controller.synced.set()
    controller.leading.set()
    controller.queue.add(KEY)
    worker = asyncio.create_task(controller.worker())
    try:
        for _ in range(500):  # up to 5 s on a loaded machine; a few ms here
            await asyncio.sleep(0.01)
            if len(controller.queue) == 0 and not controller.queue._processing:
                break
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    return seen


async def test_the_echo_of_a_write_queues_nothing_a_change_does(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """Watch events that change nothing decisions read (the echo of the operator's own
    create, the pod's scheduling, an unchanged relist, the session at the version held)
    queue no reconcile: up to four per session did, each deciding nothing. A change does."""
    session = make_session("LongRunning")
    body = session_body(session, phase="Pending")
    controller = controller_for(body)
    controller.on_session("ADDED", body)
    assert await controller.queue.get() == KEY
    controller.queue.done(KEY)
    # What the operator's creates recorded in the store...
    pod = render_pod(session, config, attempt=1)
    pod["metadata"].update(
        uid="pod-uid-1", resourceVersion="11", creationTimestamp=timestamp(LONG_AGO)
    )
    pod["status"] = {"phase": "Pending"}
    controller.store.expect_pod(KEY, pod_view(pod))
    service = render_service(session)
    service["metadata"]["resourceVersion"] = "12"
    controller.store.put_named_child(
        KEY, "Service", service_name(session), False, live_spec("Service", service)
    )
    # ...and then their watch events: nothing new.
    controller.on_child("Pod", "ADDED", copy.deepcopy(pod))
    controller.on_child("Service", "ADDED", copy.deepcopy(service))
    scheduled = copy.deepcopy(pod)
    scheduled["metadata"]["resourceVersion"] = "13"  # each change is a new version
    scheduled["spec"]["nodeName"] = "node-1"
    scheduled["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    controller.on_child("Pod", "MODIFIED", scheduled)
    controller.on_session("MODIFIED", copy.deepcopy(body))
    assert len(controller.queue) == 0
    # The pod running is news; so is a hand edit of the Service, and its deletion.
    running = copy.deepcopy(scheduled)
    running["metadata"]["resourceVersion"] = "14"
    running["status"]["phase"] = "Running"
    controller.on_child("Pod", "MODIFIED", running)
    assert len(controller.queue) == 1
    assert await controller.queue.get() == KEY
    controller.queue.done(KEY)
    edited = copy.deepcopy(service)
    edited["metadata"]["resourceVersion"] = "15"
    edited["spec"]["ports"][0]["port"] = 9999
    controller.on_child("Service", "MODIFIED", edited)
    assert len(controller.queue) == 1
    assert await controller.queue.get() == KEY
    controller.queue.done(KEY)
    controller.on_child("Service", "DELETED", edited)
    assert len(controller.queue) == 1


async def test_a_reconcile_that_wrote_nothing_is_not_repeated(
    controller_for: Callable[[JSON], Controller],
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """The worker decides again after a reconcile only when the store changed meanwhile:
    a session at rest is reconciled once per add."""
    controller = await started_pod_seen(controller_for, make_session("LongRunning"), config)
    first = await reconciles_of_one_add(controller)  # writes the Running status
    assert len(first) == 2
    again = await reconciles_of_one_add(controller)
    assert len(again) == 1


class WatchFirstKube(FakeKube):
    """Shows each create and status write to the controller's watch handlers before it
    answers it, as the API server may (the event and the answer come on different
    connections), each write at a resourceVersion of its own. `during_create` is shown
    too, once, before the first Pod create is answered: a change made by someone else."""

    def __init__(self, session: JSON) -> None:
        super().__init__(session)
        self.controller: Controller | None = None
        self.during_create: tuple[str, JSON] | None = None
        self.versions = itertools.count(100)
        # Set: the creates' watch events are kept here for the test to show after the
        # answers (the other order).
        self.later: list[tuple[str, JSON]] | None = None

    async def request(
        self, method: str, path: str, body: JSON | None = None, **options: Any
    ) -> JSON:
        answer = await super().request(method, path, body, **options)
        assert self.controller is not None
        if method == "POST" and body is not None and body["kind"] != "Event":
            answer["metadata"].update(resourceVersion=str(next(self.versions)), uid="uid-1")
            if self.later is not None:
                self.later.append((body["kind"], copy.deepcopy(answer)))
            else:
                self.controller.on_child(body["kind"], "ADDED", copy.deepcopy(answer))
            if body["kind"] == "Pod" and self.during_create is not None:
                kind, other = self.during_create
                self.during_create = None
                self.controller.on_child(kind, "MODIFIED", other)
        elif method == "PATCH" and path.endswith("/status"):
            self.controller.on_session("MODIFIED", copy.deepcopy(answer))
        return answer


async def watch_first_controller(
    monkeypatch: pytest.MonkeyPatch,
    config: OperatorConfig,
    session: AgentSession,
    during_create: Callable[[JSON], tuple[str, JSON]] | None = None,
) -> Controller:
    """A new LongRunning session whose watch events all come before the writes' answers."""
    monkeypatch.setattr(controller_module.metrics, "register_sessions", lambda _: None)
    monkeypatch.delenv("POD_NAME", raising=False)
    body = session_body(session)
    body["metadata"]["generation"] = 1
    api = WatchFirstKube(body)
    controller = Controller(config, api, RunSettings(leader_election=False))
    api.controller = controller
    if during_create is not None:
        pod = render_pod(session, config, attempt=1)
        api.during_create = during_create(pod)
    controller.on_session("ADDED", copy.deepcopy(body))
    # What the watch event queued: taken, as a worker would (the test queues it again).
    assert await controller.queue.get() == KEY
    controller.queue.done(KEY)
    return controller


async def test_the_echo_of_a_write_that_comes_before_its_answer_queues_nothing(
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """Fix: when the watch showed a Service, NetworkPolicy or pod the reconcile had just
    created before the create's answer came, the store took it as a change, and the
    session was reconciled again to decide nothing (nearly once per session when sessions
    come one at a time). Held while the reconcile runs, such an echo is now seen to be its
    own write (the same object at the version the answer carried) and queues nothing, as
    when the answer comes first."""
    controller = await watch_first_controller(monkeypatch, config, make_session("LongRunning"))
    seen = await reconciles_of_one_add(controller)
    api: WatchFirstKube = controller.client  # type: ignore[assignment]
    creates = [path.rsplit("/", 1)[1] for method, path in api.calls if method == "POST"]
    assert sorted(creates) == ["networkpolicies", "pods", "services"]
    assert len(seen) == 1


async def test_news_heard_during_a_reconcile_is_reconciled_and_the_status_echo_is_not(
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
) -> None:
    """An event that is not the reconcile's own write (here the pod running, shown while
    the reconcile that created it still runs) queues the session again once that reconcile
    ends; that reconcile writes the Running status, whose echo, shown before the patch's
    answer, queues nothing more."""

    def started(pod: JSON) -> tuple[str, JSON]:
        running = copy.deepcopy(pod)
        running["metadata"].update(
            uid="uid-1", resourceVersion="200", creationTimestamp=timestamp(LONG_AGO)
        )
        # On a node that cannot resize pods (KWOK's): no end of the start-up boost.
        runner = {"name": runtime.CONTAINER_NAME, "state": {"running": {}}}
        running["status"] = {
            "phase": "Running",
            "startTime": timestamp(LONG_AGO),
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [runner],
        }
        return "Pod", running

    session = make_session("LongRunning")
    controller = await watch_first_controller(monkeypatch, config, session, started)
    seen = await reconciles_of_one_add(controller)
    assert len(seen) == 2
    assert controller.store.sessions[KEY].status.phase == "Running"


@pytest.mark.parametrize("answer_first", [False, True])
async def test_a_childs_version_is_read_once_whichever_of_answer_and_event_comes_first(
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., AgentSession],
    config: OperatorConfig,
    answer_first: bool,
) -> None:
    """A create's answer and its watch event carry one version of the child; whichever
    comes second is not read again (a pod's view, a Service's or NetworkPolicy's owned
    spec as canonical JSON: a few percent of the operator's CPU per session)."""
    reads = {"pod_view": 0, "live_spec": 0}

    def counted(name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def counting(*args: Any) -> Any:
            reads[name] += 1
            return read(*args)

        return counting

    monkeypatch.setattr(store_module, "pod_view", counted("pod_view", pod_view))
    monkeypatch.setattr(store_module, "live_spec", counted("live_spec", live_spec))
    session = make_session("LongRunning")
    controller = await watch_first_controller(monkeypatch, config, session)
    api: WatchFirstKube = controller.client  # type: ignore[assignment]
    if answer_first:
        api.later = []
    assert len(await reconciles_of_one_add(controller)) == 1
    for kind, body in api.later or []:
        controller.on_child(kind, "ADDED", body)
    assert sorted(kind for kind, _ in api.later or []) == (
        ["NetworkPolicy", "Pod", "Service"] if answer_first else []
    )
    assert reads == {"pod_view": 1, "live_spec": 2}
    assert len(controller.queue) == 0
    children = controller.store.children_of(KEY)
    assert len(children.pod_views()) == 1 and children.services and children.network_policies
    # The pod's next version is read.
    pod_body = render_pod(session, config, attempt=1)
    pod_body["metadata"].update(resourceVersion="900", uid="uid-1")
    pod_body["status"] = {"phase": "Running", "startTime": timestamp(LONG_AGO)}
    controller.on_child("Pod", "MODIFIED", pod_body)
    assert reads["pod_view"] == 2
    assert children.pod_views()[0].phase == "Running"


class LabelKube(FakeKube):
    """Pod patches of the leader label: the first `hold` wait for `release`, the next
    `refuse` answer 429; the label as the API server would hold it."""

    def __init__(self, hold: int = 0, refuse: int = 0) -> None:
        super().__init__({})
        self.hold, self.refuse = hold, refuse
        self.release = asyncio.Event()
        self.label: str | None = None

    async def patch(self, kind: str, namespace: str | None, name: str, patch: JSON,
                    sub: str | None = None, strategic: bool = False) -> JSON:  # fmt: skip
        value = patch["metadata"]["labels"][controller_module.LEADER_LABEL]
        if self.hold:
            self.hold -= 1
            await self.release.wait()
        elif self.refuse:
            self.refuse -= 1
            raise ApiError(429, "TooManyRequests", "slow down", retry_after=0)
        self.label = value
        return {}


@pytest.mark.parametrize("case", ["slow-unlabel-then-lead", "refused-once"])
async def test_the_leader_ends_up_labelled_whatever_order_the_patches_take(
    case: str, monkeypatch: pytest.MonkeyPatch, config: OperatorConfig
) -> None:
    """Fix: each change was a patch of its own: a slow `leader=None` landing after the
    `true` of a leadership regained, or one refused `true`, left the leader unlabelled (the
    operator Service then sends runners' reports nowhere) for as long as it led."""
    monkeypatch.setattr(controller_module.metrics, "register_sessions", lambda _: None)
    monkeypatch.setattr(controller_module.asyncio, "sleep", _no_wait)
    monkeypatch.setenv("POD_NAME", "operator-0")
    monkeypatch.setenv("POD_NAMESPACE", "corral-system")
    kube = LabelKube(refuse=1 if case == "refused-once" else 0)
    controller = Controller(config, kube, RunSettings(leader_election=False))
    controller.start_leading()
    if case == "slow-unlabel-then-lead":
        async with asyncio.timeout(5):
            while kube.label != "true":
                await _yield()
        kube.hold = 1
        controller.stop_leading()  # its patch is slow...
        await _yield()
        controller.start_leading()  # ...and leadership comes back meanwhile
        await _yield()
        kube.release.set()
    async with asyncio.timeout(5):
        while kube.label != "true":
            await _yield()
    for _ in range(20):
        await _yield()
    assert kube.label == "true" and controller.leading.is_set()


_real_sleep = asyncio.sleep


async def _no_wait(seconds: float) -> None:
    await _real_sleep(0)


async def _yield() -> None:
    await _real_sleep(0.001)


async def test_a_refused_reconcile_is_retried_no_sooner_than_retry_after_and_with_jitter(
    controller_for: Callable[[JSON], Controller],
) -> None:
    """Fix: retries came 0.5, 1, 2 s after a failure whatever the API server asked, and
    sessions refused together (a 429 storm) retried in lockstep."""
    delays: list[float] = []
    controllers = [controller_for({}) for _ in range(8)]
    for controller in controllers:
        controller.queue.add_after = lambda key, delay, cause: delays.append(delay)  # type: ignore[method-assign]
        controller._retry(KEY, ApiError(429, "TooManyRequests", "slow down", retry_after=7))
    assert all(delay >= 7 for delay in delays)
    delays.clear()
    for controller in controllers:
        controller._retry(("team-a", "other"), RuntimeError("boom"))
    assert len(set(delays)) > 1  # jittered: not all at the same moment
    assert all(0.5 <= delay <= 1.0 for delay in delays)
