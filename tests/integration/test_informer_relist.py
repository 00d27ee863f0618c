"""The operator's child watches against the real API server: relists and pages.

- A pod deleted while the operator's pod watch is down (the API server refuses the pod
  watch and list for a while, as in an outage) is found missing by the relist that
  follows, and its LongRunning session gets a new pod.
- A pod the watch has not shown yet (still cut off), whose creation's expectation is over,
  is looked up, not replaced by a second pod.
- The LIST is paginated: with a page size of 2, five objects arrive over several pages
  (real `continue` tokens from the API server).

The operator runs in this process (controller, child informers, and a session informer
in place of kopf) with a client whose pod requests the test can cut off; everything else
is the real operator code against the real API server. Its namespace is outside the run's
prefix, so the run's shared operator does not act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from lifecycle_support import own_prefix, restricted_namespace, small_resources

from corral.controller import controller as controller_module
from corral.controller import store as store_module
from corral.controller.controller import Controller, RunSettings
from corral.kube.client import ApiError, KubeClient, load_connection
from corral.kube.informer import Informer
from corral.render.meta import SESSION_LABEL
from corral.testing.operator import kwok_operator_config

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
T = TypeVar("T")


class CuttableClient(KubeClient):
    """The operator's real client, except that while `cut` is set every pod list and watch
    fails with 503 and an open pod watch ends (an API server outage, as the pods see it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut = asyncio.Event()
        self.refused = 0

    def _refuse(self) -> ApiError:
        self.refused += 1
        return ApiError(503, "ServiceUnavailable", "pod requests cut off by the test")

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
        if self.cut.is_set() and method == "GET" and path.endswith("/pods"):
            raise self._refuse()
        return await super().request(method, path, body, content_type, params, accept, lean)

    async def stream(
        self, path: str, params: dict[str, str], lean: bool = False
    ) -> AsyncIterator[JSON]:
        if not path.endswith("/pods"):
            async for event in super().stream(path, params, lean):
                yield event
            return
        if self.cut.is_set():
            raise self._refuse()
        events = super().stream(path, params, lean).__aiter__()
        cut = asyncio.ensure_future(self.cut.wait())
        try:
            while True:
                step = asyncio.ensure_future(events.__anext__())
                await asyncio.wait({step, cut}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                    raise self._refuse()
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
        finally:
            cut.cancel()
            await events.aclose()  # type: ignore[attr-defined]


async def eventually(probe: Callable[[], Awaitable[T | None]], seconds: float, what: str) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                found = await probe()
                if found:
                    return found
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}") from None


@pytest.fixture
def own_namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = restricted_namespace(core, f"{own_prefix()}relist")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
async def admin(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    api = KubeClient(load_connection(str(kubeconfig)))
    yield api
    await api.close()


async def session_pods(admin: KubeClient, namespace: str, session: str) -> list[JSON]:
    listed = await admin.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        params={"labelSelector": f"{SESSION_LABEL}={session}"},
    )
    items: list[JSON] = listed["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


@dataclass
class InProcessOperator:
    """The operator's controller and a session informer (in place of kopf) running in this
    process on a client whose pod requests the test can cut off."""

    client: CuttableClient
    controller: Controller
    tasks: list[asyncio.Task[None]]

    async def cut_pods(self) -> None:
        """The outage: the pod watch ends and the API server refuses pods until uncut."""
        self.client.cut.set()

        async def refused() -> bool:
            return self.client.refused > 0

        await eventually(refused, 30, "the pod watch cut off")

    def assert_alive(self) -> None:
        assert not any(task.done() for task in self.tasks), [t for t in self.tasks if t.done()]


@contextlib.asynccontextmanager
async def in_process_operator(
    kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessOperator]:
    monkeypatch.setattr(controller_module.metrics, "register_sessions", lambda _: None)
    monkeypatch.delenv("POD_NAME", raising=False)
    operator_client = CuttableClient(load_connection(str(kubeconfig)))
    settings = RunSettings(workers=4, leader_election=False, namespaces=(namespace,))
    controller = Controller(kwok_operator_config(namespace), operator_client, settings)
    sessions = Informer(operator_client, "AgentSession", "", controller.on_session, [namespace])
    tasks = [
        asyncio.create_task(controller.run(), name="controller"),
        asyncio.create_task(sessions.run(), name="sessions"),
    ]
    try:
        yield InProcessOperator(operator_client, controller, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await operator_client.close()


async def create_long_running(admin: KubeClient, namespace: str, name: str) -> None:
    await admin.create(
        {
            "apiVersion": "corral.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"pattern": "LongRunning", "resources": small_resources()},
        }
    )


async def test_a_pod_deleted_while_the_watch_was_down_is_recreated(
    kubeconfig: Path,
    crd: None,
    own_namespace: str,
    admin: KubeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fix: the relist reported the vanished pod without its ownerReferences, the controller
    dropped the event, and the session kept a pod that no longer existed (never replaced)."""
    namespace = own_namespace
    async with in_process_operator(kubeconfig, namespace, monkeypatch) as operator:
        controller = operator.controller
        await create_long_running(admin, namespace, "steady")

        async def one_pod() -> JSON | None:
            pods = await session_pods(admin, namespace, "steady")
            return pods[0] if len(pods) == 1 else None

        first = await eventually(one_pod, 120, "the session's pod")

        async def operator_knows(uid: str) -> bool:
            views = controller.store.children_of((namespace, "steady")).pods.values()
            return any(view.uid == uid for view in views)

        await eventually(lambda: operator_knows(first["metadata"]["uid"]), 60, "the pod seen")

        async def status_names(name: str) -> bool:
            session = await admin.get("AgentSession", namespace, "steady")
            return bool(session.get("status", {}).get("podName") == name)

        # The first "starting" status may be held back up to 2 s (reconciler.STATUS_DEFER_
        # SECONDS); a pod lost before any status named it is replaced as a first start, under
        # the same name (a failed cold run, 2026-12-05). This test is about a pod status knows.
        await eventually(lambda: status_names(first["metadata"]["name"]), 60, "the status")

        await operator.cut_pods()
        await admin.delete(
            "Pod", namespace, first["metadata"]["name"], first["metadata"]["uid"], grace_seconds=0
        )

        async def gone() -> bool:
            return not await session_pods(admin, namespace, "steady")

        await eventually(gone, 60, "the pod deleted")
        operator.client.cut.clear()  # the relist that follows finds the pod missing

        async def replaced() -> JSON | None:
            pod = await one_pod()
            return pod if pod and pod["metadata"]["uid"] != first["metadata"]["uid"] else None

        second = await eventually(replaced, 180, "a new pod for the session")
        assert second["metadata"]["name"] != first["metadata"]["name"]  # the next attempt
        operator.assert_alive()


async def test_the_list_arrives_in_pages(
    kubeconfig: Path, own_namespace: str, admin: KubeClient
) -> None:
    """Fix: the LIST was one unpaginated response of every object."""
    names = [f"paged-{i}" for i in range(5)]
    for name in names:
        await admin.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": own_namespace,
                    "labels": {"corral-test": "pages"},
                },
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
            }
        )
    pages: list[int] = []

    class Counting(KubeClient):
        async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> JSON:
            answer = await super().request(method, path, *args, **kwargs)
            if method == "GET" and (kwargs.get("params") or {}).get("limit") == "2":
                pages.append(len(answer.get("items") or []))
            return answer

    seen: list[str] = []
    counting = Counting(load_connection(str(kubeconfig)))
    informer = Informer(
        counting,
        "Service",
        "corral-test=pages",
        lambda kind, body: seen.append(body["metadata"]["name"]),
        [own_namespace],
        page_size=2,
    )
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(60):
            await informer.synced.wait()
        assert sorted(seen) == names
        assert len(pages) >= 3 and max(pages) <= 2, pages
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await counting.close()


async def test_built_in_objects_arrive_whole_but_for_their_managed_fields(
    kubeconfig: Path, own_namespace: str, admin: KubeClient
) -> None:
    """The child informers parse the API server's objects without metadata.managedFields
    (corral.kube.managed_fields): listed or watched, a Service and a NetworkPolicy read as
    a GET reads them, less that field, which the GET shows is there."""
    labels = {"corral-test": "lean"}
    made = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "lean", "namespace": own_namespace, "labels": labels},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "lean", "namespace": own_namespace, "labels": labels},
            "spec": {"podSelector": {"matchLabels": {"app": "lean"}}, "policyTypes": ["Egress"]},
        },
    ]
    await admin.create(made[0])  # listed; the NetworkPolicy comes by the watch
    latest: dict[str, JSON] = {}
    both = asyncio.Event()

    def seen_one(_: str, body: JSON) -> None:
        latest[body["kind"]] = body
        if len(latest) == len(made):
            both.set()

    informers = [
        Informer(admin, kind, "corral-test=lean", seen_one, [own_namespace])
        for kind in ("Service", "NetworkPolicy")
    ]
    tasks = [asyncio.create_task(i.run()) for i in informers]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(i.synced.wait() for i in informers))
            await admin.create(made[1])
            await both.wait()
        for manifest in made:
            kind = manifest["kind"]
            whole = await admin.get(kind, own_namespace, "lean")
            assert whole["metadata"].pop("managedFields")  # the API server sends them
            seen = dict(latest[kind])
            seen.setdefault("kind", kind)  # (list items carry no kind)
            seen.setdefault("apiVersion", manifest["apiVersion"])
            assert seen == whole, kind
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_pod_the_watch_has_not_shown_is_looked_up_not_replaced(
    kubeconfig: Path,
    crd: None,
    own_namespace: str,
    admin: KubeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fix (issue 16, two pods of one session at once after an API server outage): the
    session's status named its pod, the store lacked it (the pod watch still down, the
    created pod's expectation over), and the reconcile made the next attempt beside it.
    Here the pod watch is down from before the session exists, and the expectation lasts
    2 s instead of 60: the operator must look the pod up and keep it."""
    namespace = own_namespace
    key = (namespace, "unseen")
    monkeypatch.setattr(store_module, "EXPECTATION_SECONDS", 2.0)
    async with in_process_operator(kubeconfig, namespace, monkeypatch) as operator:
        controller = operator.controller
        async with asyncio.timeout(60):
            await controller.synced.wait()
        await operator.cut_pods()
        await create_long_running(admin, namespace, "unseen")

        async def named_pod() -> str | None:
            found = await admin.get("AgentSession", namespace, "unseen")
            name: str | None = (found.get("status") or {}).get("podName")
            return name

        first = await eventually(named_pod, 60, "the status naming the pod")
        assert not controller.store.children_of(key).pods, "the pod watch is cut"
        # Past the expectation, with reconciles: the store alone says the pod is gone.
        for _ in range(4):
            await asyncio.sleep(1.5)
            controller.queue.add(key)
        await asyncio.sleep(2)
        pods = await session_pods(admin, namespace, "unseen")
        assert [p["metadata"]["name"] for p in pods] == [first], "a second pod was made"

        operator.client.cut.clear()

        async def seen_by_the_watch() -> bool:
            return first in controller.store.children_of(key).pods

        await eventually(seen_by_the_watch, 60, "the pod watch back, showing the pod")
        pods = await session_pods(admin, namespace, "unseen")
        assert [p["metadata"]["name"] for p in pods] == [first]
        operator.assert_alive()
