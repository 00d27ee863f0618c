"""Issue 13 on the real node: users reach sessions only through the gateway.

A user here has nothing but a kubeconfig's worth: the API server's address and CA and a
ServiceAccount token. They talk to the gateway through the API server's service proxy
(the chart lets every authenticated user proxy to the gateway Service and nothing else),
the gateway checks the same token (X-Corral-Token) with TokenReview and their right to
the session with a SubjectAccessReview on agentsessions/connect, and forwards to the
runner with the session's credential. Sleep and wake through the gateway: test_hybrid.py.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import pytest
from e2e_support import (
    GatewayClient,
    PodProxy,
    Release,
    Sessions,
    make_user,
    ready_pod,
    session_pods,
    spec,
)
from kubernetes import client

from corral.cluster.layout import Layout
from corral.testing.anthropic_script import text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def chat(
    operator: Release, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> Any:
    """A LongRunning session `chat` with its ready pod, and `other` beside it (suspended:
    it exists, it needs no pod)."""
    sessions = Sessions(custom, namespace)
    sessions.create("chat", spec("LongRunning"))
    sessions.create("other", spec("LongRunning", suspend=True))
    return ready_pod(core, namespace, "chat")


@pytest.fixture
def chat_user(
    operator: Release,
    real_node_cluster: Layout,
    core: client.CoreV1Api,
    api_client: client.ApiClient,
    namespace: str,
) -> GatewayClient:
    """A user whose only right is to talk to `chat` (a Role naming that one session)."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    role = client.V1Role(
        metadata=client.V1ObjectMeta(name="talk-to-chat"),
        rules=[
            client.V1PolicyRule(
                api_groups=["corral.dev"],
                resources=["agentsessions/connect"],
                resource_names=["chat"],
                verbs=["create", "get"],
            )
        ],
    )
    rbac.create_namespaced_role(namespace, role)
    ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="talk-to-chat")
    token = make_user(core, rbac, namespace, "chat-user", ref)
    return GatewayClient(real_node_cluster, operator.namespace, token, release=operator.name)


async def test_a_user_bound_to_one_session_talks_to_it_over_sse_and_websocket(
    chat: Any, chat_user: GatewayClient, namespace: str, fake: FakeAnthropic
) -> None:
    fake.add(text("hello over SSE"))
    reply = chat_user.send(namespace, "chat", "say hello")
    assert reply.status == 200, reply
    result = reply.events[-1]
    assert result["type"] == "result" and result["subtype"] == "success", reply.events[-3:]
    assert "hello over SSE" in result.get("result", ""), result
    status = chat_user.get(namespace, "chat", "/v1/status")
    assert status["numTurns"] >= 1, status

    # WebSocket: the API server's service proxy passes the upgrade on to the gateway.
    fake.add(text("hello over WebSocket"))
    frames = await chat_user.websocket_turn(namespace, "chat", "say hello again")
    assert frames and frames[-1]["type"] == "result", frames[-3:]
    assert frames[-1]["subtype"] == "success", frames[-1]
    assert "hello over WebSocket" in frames[-1].get("result", ""), frames[-1]
    # Both turns went to the one conversation, through the gateway.
    transcript = chat_user.get(namespace, "chat", "/v1/transcript")
    assert "say hello again" in str(transcript), str(transcript)[-2000:]


def test_the_gateway_refuses_the_wrong_user_and_no_token(
    chat: Any,
    chat_user: GatewayClient,
    namespace: str,
    operator: Release,
    real_node_cluster: Layout,
) -> None:
    # Same user, same namespace, another session: RBAC says no, and says what is missing.
    for method, path, body in (
        ("GET", "/v1/status", None),
        ("POST", "/v1/messages", {"text": "hi", "stream": False}),
    ):
        status, answer = chat_user.call(method, namespace, "other", path, body)
        assert status == 403, (path, status, answer)
        assert "agentsessions/connect" in answer["error"], answer
    # A session that does not exist is no different to this user: 403, not 404.
    status, answer = chat_user.call("GET", namespace, "no-such-session", "/v1/status")
    assert status == 403, (status, answer)

    # The API server lets the admin through to the gateway; the gateway wants a token.
    def as_admin(token: str | None) -> GatewayClient:
        return GatewayClient(
            real_node_cluster, operator.namespace, token, release=operator.name, as_admin=True
        )

    status, answer = as_admin(None).call("GET", namespace, "chat", "/v1/status")
    assert status == 401, (status, answer)
    status, answer = as_admin("not-a-token").call("GET", namespace, "chat", "/v1/status")
    assert status == 401, (status, answer)
    # The right token behind the admin's certificate: the gateway looks at the token only.
    status, answer = as_admin(chat_user.token).call("GET", namespace, "chat", "/v1/status")
    assert status == 200 and answer["pattern"] == "LongRunning", (status, answer)


def test_the_runner_refuses_the_api_servers_pod_proxy(
    chat: Any, namespace: str, real_node_cluster: Layout
) -> None:
    """Even the cluster admin's pod proxy (no gateway credential; the API server's traffic
    comes from the node, which the session's NetworkPolicy does not name) gets nothing."""
    proxy = PodProxy(real_node_cluster, namespace, chat.metadata.name)
    status, body = proxy.status_of("/v1/status")
    print(f"pod proxy to the runner: {status} {body[:200]}")
    assert status in (401, 502, 503), (status, body)
    assert "sessionId" not in body, body


SAMPLES = int(os.environ.get("CORRAL_E2E_WAKE_SAMPLES", "0"))


@pytest.mark.skipif(SAMPLES < 1, reason="a benchmark: set CORRAL_E2E_WAKE_SAMPLES=N")
# Each sample waits a 15 s idleTimeout and the pod's going: past the suite's 600 s for 20.
@pytest.mark.timeout(300 + 60 * SAMPLES)
def test_benchmark_wake_on_request(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    gateway: GatewayClient,
) -> None:
    """Issue 13, benchmark 3: a message to a sleeping Hybrid session, from the request to
    the first event of the reply (the held request's wake, pod start, runner start, turn)."""
    sessions = Sessions(custom, namespace)
    # (Idle may come before the first pod is even seen Ready: nothing else talks to it.)
    sessions.create("bench", spec("Hybrid", idleTimeout="15s", storage={"size": "1Gi"}))
    timings: list[float] = []
    for sample in range(SAMPLES):
        sessions.wait_phase("bench", "Idle", timeout=120)
        wait_for(lambda: session_pods(core, namespace, "bench") == [], timeout=90)
        fake.reset()
        fake.add(text(f"awake {sample}"))
        reply = gateway.send(namespace, "bench", f"wake up {sample}")
        assert reply.status == 200 and reply.events[-1]["type"] == "result", reply
        assert ": waking" in reply.comments, reply.comments
        assert reply.first_event_after is not None
        timings.append(reply.first_event_after)
        print(f"wake {sample}: first event after {reply.first_event_after:.2f}s")
    timings.sort()
    p99 = timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))]
    print(
        f"wake on request, n={len(timings)}: p50 {statistics.median(timings):.2f}s "
        f"p99 {p99:.2f}s min {timings[0]:.2f}s max {timings[-1]:.2f}s"
    )
