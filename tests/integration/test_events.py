"""Events through corral.kube.events against the real API server, reached through a proxy
the test can cut (an API server restarting, as its clients see it).

- Posted while the API server cannot be reached: the call returns at once (a reconcile is
  never failed or held by its Event), and the Event is there, once, after the API server is
  back.
- Refused for good (422): dropped at once and counted, never retried.
- Unreachable for longer than every retry: dropped and counted, and nothing arrives later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client

from corral.kube.client import KubeClient, load_connection
from corral.kube.events import EVENTS_DROPPED, EventPoster, EventTarget, event_manifest
from corral.testing.gateway import scratch_namespace
from corral.testing.kube import wait_for
from corral.testing.tcp_proxy import CuttableProxy
from testrun import RUN_ID

pytestmark = pytest.mark.integration
COMPONENT = "corral-events-test"


@pytest.fixture(scope="module")
def namespace(kubeconfig: Path, api_client: client.ApiClient) -> Iterator[str]:
    with scratch_namespace(client.CoreV1Api(api_client), f"events{RUN_ID}") as name:
        yield name


@pytest.fixture
def proxy(kubeconfig: Path) -> Iterator[CuttableProxy]:
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    cuttable = CuttableProxy(int(urlparse(server).port or 443))
    yield cuttable
    cuttable.close()


@pytest.fixture
async def kube(proxy: CuttableProxy, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[KubeClient]:
    path = proxy.kubeconfig(kubeconfig, tmp_path / "through-proxy.kubeconfig")
    opened = KubeClient(load_connection(str(path)))
    yield opened
    await opened.close()


def reasons(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    found = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},source={COMPONENT}"
    )
    return [event.reason for event in found.items]


def dropped(why: str) -> float:
    return EVENTS_DROPPED.labels(why=why)._value.get()


async def test_an_event_posted_while_the_api_server_is_away_arrives_once_it_is_back(
    kube: KubeClient, proxy: CuttableProxy, core: client.CoreV1Api, namespace: str
) -> None:
    poster = EventPoster(kube, pauses=(0.5, 1.0, 2.0, 4.0))
    target = EventTarget(namespace, "away", None)
    proxy.cut()
    started = time.monotonic()
    await poster.post(event_manifest(target, "Posted", "while away", COMPONENT))
    # Refused by the network: not raised, handed to the background at once.
    assert time.monotonic() - started < 5
    assert poster.pending == 1
    await asyncio.sleep(0.7)  # the first background attempt fails too
    assert reasons(core, namespace, "away") == []
    proxy.heal()
    async with asyncio.timeout(30):
        await poster.drain()
    assert poster.pending == 0
    assert wait_for(lambda: reasons(core, namespace, "away"), timeout=30) == ["Posted"]
    await poster.close()


async def test_an_event_the_api_server_refuses_is_dropped_and_counted(
    kube: KubeClient, core: client.CoreV1Api, namespace: str
) -> None:
    poster = EventPoster(kube, pauses=(0.1,))
    before = dropped("refused")
    manifest = event_manifest(EventTarget(namespace, "refused", None), "Bad", "x", COMPONENT)
    manifest["involvedObject"]["namespace"] = "another-namespace"  # 422: must match
    await poster.post(manifest)
    assert poster.pending == 0
    assert dropped("refused") == before + 1
    assert reasons(core, namespace, "refused") == []


async def test_an_event_still_failing_after_every_retry_is_dropped_and_never_arrives(
    kube: KubeClient, proxy: CuttableProxy, core: client.CoreV1Api, namespace: str
) -> None:
    poster = EventPoster(kube, pauses=(0.1, 0.1))
    before = dropped("retries")
    proxy.cut()
    await poster.post(event_manifest(EventTarget(namespace, "gone", None), "Lost", "x", COMPONENT))
    async with asyncio.timeout(10):
        await poster.drain()
    assert poster.pending == 0
    assert dropped("retries") == before + 1
    proxy.heal()
    await asyncio.sleep(1.0)
    assert reasons(core, namespace, "gone") == []


async def test_the_operators_and_the_gateways_events_are_both_accepted(
    kube: KubeClient, core: client.CoreV1Api, namespace: str
) -> None:
    """The operator's (no action) and the gateway's (an action, so an eventTime too); an
    Event posted twice is there once."""
    poster = EventPoster(kube)
    target = EventTarget(namespace, "both", None)
    plain = event_manifest(target, "Plain", "no action", COMPONENT)
    await poster.post(plain)
    await poster.post(event_manifest(target, "Acted", "an action", COMPONENT, action="Wake"))
    # Posted again (an attempt whose answer was lost): the same Event, not a second one.
    before = dropped("refused")
    await poster.post(plain)
    assert dropped("refused") == before
    assert poster.pending == 0
    assert sorted(reasons(core, namespace, "both")) == ["Acted", "Plain"]
