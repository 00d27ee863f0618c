"""The gateway's egress proxy on the real node: a session pod reaches an allowed name only
through the proxy, and a refused or rebinding name not at all.

Every target is a server this test made in the node's "outside" network namespace: a web
server at node.OUTSIDE_IP (reached by the names `allowed.test` and `refused.test`) and a
decoy at node.PRIVATE_DECOY_IP (the name `rebind.test`: an allowed name that resolves to a
private address). The names are resolved by the gateway from the chart's
`gateway.egressProxy.staticHosts` (set in conftest.release_values): the test's DNS. The
requests run in the session's pod with `kubectl exec`, as the runner's user with the pod's
environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as any Bash child of the agent would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    EGRESS_NAMES,
    FAKE_API_EGRESS,
    Sessions,
    kubectl,
    ready_pod,
    spec,
    wait_policy_enforced,
)
from kubernetes import client

from corral.cluster import node
from corral.testing.egress_targets import HttpTarget
from corral.testing.kube import wait_for
from corral.testing.outside import Decoy

pytestmark = pytest.mark.e2e

TARGET_PORT = 8091

# Runs in the session pod. `get`: urllib, which finds HTTP_PROXY in the environment itself.
# `connect`: CONNECT through HTTPS_PROXY by hand, then a plain request inside the tunnel
# (what an HTTPS client does, without TLS so that the target can read it).
CLIENT = r"""
import os, socket, sys, urllib.error, urllib.parse, urllib.request
mode, url = sys.argv[1], sys.argv[2]
if mode == "get":
    try:
        with urllib.request.urlopen(url, timeout=20) as reply:
            print(reply.status, reply.read().decode().strip())
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode().strip())
    except OSError as error:
        print("error", error)
    sys.exit(0)
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
target = urllib.parse.urlsplit(url)
sock = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
authority = f"{target.hostname}:{target.port}"
sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
answer = sock.makefile("rb")
status = answer.readline().decode().strip()
while answer.readline() not in (b"\r\n", b""):
    pass
if status.split(" ")[1] == "200":
    request = f"GET {target.path} HTTP/1.1\r\nHost: {target.hostname}\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode())
    print("200", answer.read().decode().split("\r\n\r\n", 1)[-1].strip())
else:
    print(status.split(" ")[1], answer.read().decode().strip())
"""


@pytest.fixture(scope="module")
def target(node_layout: node.NodeLayout) -> Iterator[HttpTarget]:
    server = HttpTarget(node_layout.outside_netns, node.OUTSIDE_IP, TARGET_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def decoy(node_layout: node.NodeLayout) -> Iterator[Decoy]:
    server = Decoy(node_layout.outside_netns, node.PRIVATE_DECOY_IP, TARGET_PORT).start()
    yield server
    server.stop()


def run_in(kubeconfig: Path, namespace: str, pod: str, mode: str, url: str) -> tuple[str, str]:
    done = kubectl(
        kubeconfig, "-n", namespace, "exec", pod, "--", "python3", "-c", CLIENT, mode, url
    )
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.strip().partition(" ")
    return status, body


def gateway_pod_ips(core: client.CoreV1Api, namespace: str) -> set[str]:
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=gateway")
    return {p.status.pod_ip for p in pods.items if p.status.pod_ip}


def egress_refusals(kubeconfig: Path, core: client.CoreV1Api, namespace: str) -> dict[str, float]:
    """corral_gateway_egress_refused_total by reason, summed over the gateway's pods."""
    scrape = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:8081/metrics').read().decode())"
    )
    totals: dict[str, float] = {}
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=gateway")
    for pod in pods.items:
        done = kubectl(
            kubeconfig, "-n", namespace, "exec", pod.metadata.name, "--", "python3", "-c", scrape
        )
        assert done.returncode == 0, done.stderr
        for line in done.stdout.splitlines():
            if line.startswith("corral_gateway_egress_refused_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                totals[reason] = totals.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_the_test_dns_names_what_this_test_uses() -> None:
    assert EGRESS_NAMES["allowed.test"] == [node.OUTSIDE_IP]
    assert EGRESS_NAMES["rebind.test"] == [node.PRIVATE_DECOY_IP]


def test_a_session_reaches_allowed_names_only_through_the_proxy(
    kubeconfig: Path,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    operator: Any,
    node_layout: node.NodeLayout,
    target: HttpTarget,
    decoy: Decoy,
    fake: Any,
) -> None:
    network = {
        "allowPublicHttps": False,
        "allowedDomains": [f"allowed.test:{TARGET_PORT}", f"rebind.test:{TARGET_PORT}"],
        "egress": [
            FAKE_API_EGRESS,
            {"cidr": f"{node.OUTSIDE_IP}/32", "ports": [{"port": TARGET_PORT}]},
        ],
    }
    Sessions(custom, namespace).create("egress", spec("LongRunning", network=network))
    pod = ready_pod(core, namespace, "egress")
    wait_policy_enforced(node_layout, pod.status.pod_ip)
    name = pod.metadata.name
    env = {e.name: e.value for e in pod.spec.containers[0].env if e.value}
    assert env["HTTPS_PROXY"].endswith(f".{operator.namespace}.svc:3128"), env
    before = egress_refusals(kubeconfig, core, operator.namespace)

    def run(mode: str, url: str) -> tuple[str, str]:
        return run_in(kubeconfig, namespace, name, mode, url)

    # Allowed, plain HTTP (urllib finds HTTP_PROXY itself) and through a CONNECT tunnel.
    assert run("get", f"http://allowed.test:{TARGET_PORT}/plain") == ("200", "hello /plain")
    assert run("connect", f"http://allowed.test:{TARGET_PORT}/tunnel") == (
        "200",
        "hello /tunnel",
    )
    seen = {s.request_line.split(" ")[1]: s.peer for s in target.requests()}
    gateways = gateway_pod_ips(core, operator.namespace)
    # The target saw the gateway, not the session's pod: the requests went through the proxy
    # (the pod itself cannot even resolve these names).
    assert seen["/plain"] in gateways and seen["/tunnel"] in gateways, (seen, gateways)

    # Not in allowedDomains: 403 with the reason, nothing reaches the server.
    status, body = run("connect", f"http://refused.test:{TARGET_PORT}/refused")
    assert status == "403" and "not in the session's spec.network.allowedDomains" in body, body
    status, body = run("get", f"http://refused.test:{TARGET_PORT}/refused-plain")
    assert status == "403", body
    # Allowed name, private address (DNS rebinding): 403, and the decoy sees nothing.
    status, body = run("connect", f"http://rebind.test:{TARGET_PORT}/rebind")
    assert status == "403" and f"{node.PRIVATE_DECOY_IP} is a private address" in body, body
    paths = {s.request_line.split(" ")[1] for s in target.requests()}
    assert not {"/refused", "/refused-plain", "/rebind"} & paths, paths
    assert decoy.connections == 0

    # The author sees what the agent tried: Warning Events on the session naming the hosts.
    def refusal_events() -> list[str] | None:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=egress,reason=EgressRefused"
        ).items
        messages = [e.message for e in events]
        wanted = all(any(host in m for m in messages) for host in ("refused.test", "rebind.test"))
        return messages if wanted else None

    messages = wait_for(refusal_events, timeout=30, interval=1, what="EgressRefused Events")
    assert all(e.startswith("egress to ") for e in messages), messages
    after = egress_refusals(kubeconfig, core, operator.namespace)
    assert after.get("not-allowed", 0) - before.get("not-allowed", 0) == 2, (before, after)
    assert after.get("private", 0) - before.get("private", 0) == 1, (before, after)
