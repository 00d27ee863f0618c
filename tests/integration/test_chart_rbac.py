"""The run's operator has exactly the Helm chart's rights, and needs no more.

The `operator` fixture runs as a ServiceAccount bound to the chart's rendered RBAC
(corral.testing.chart_rbac), so every integration test that uses it fails on a verb the
chart lacks. This module checks that identity, and the write that once lacked its verb:
patching a session's NetworkPolicy when spec.network changes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from lifecycle_support import KubeletStandIn, Sessions, load_example

from corral.testing.chart_rbac import ChartIdentity, refused_requests
from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "net-change"
NEW_CIDR = "203.0.113.7/32"


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from corral.cluster.build import binary_path

    return subprocess.run(
        [str(binary_path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_run_operator_authenticates_as_the_charts_service_account(
    operator: OperatorProcess, operator_identity: ChartIdentity
) -> None:
    assert operator.kubeconfig == operator_identity.kubeconfig
    config = yaml.safe_load(operator.kubeconfig.read_text())
    [user] = config["users"]
    assert set(user["user"]) == {"token"}  # no client certificate of the admin
    who = kubectl(operator.kubeconfig, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == operator_identity.username
    # Not cluster-admin: nothing beyond the chart's rules.
    for args in (["*", "*"], ["list", "secrets"], ["create", "leases"], ["update", "pods"]):
        done = kubectl(operator.kubeconfig, "auth", "can-i", *args, "-A")
        assert done.stdout.strip() == "no", args


@pytest.fixture
def sessions(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> Iterator[Sessions]:
    core.create_namespaced_secret(namespace, load_example(REPO, "credentials-secret.yaml"))
    with KubeletStandIn(core, namespace):
        yield Sessions(custom, namespace)


def policy_cidrs(networking: client.NetworkingV1Api, namespace: str) -> set[str]:
    policy = networking.read_namespaced_network_policy(NAME, namespace)
    return {
        peer.ip_block.cidr
        for rule in policy.spec.egress or []
        for peer in rule.to or []
        if peer.ip_block is not None
    }


def test_a_spec_network_change_is_patched_into_the_policy_under_chart_rbac(
    sessions: Sessions, api_client: client.ApiClient, operator: OperatorProcess
) -> None:
    """Failed with 403 (and wedged the session's later steps) while the chart granted no
    `patch` on networkpolicies."""
    networking = client.NetworkingV1Api(api_client)
    spec: dict[str, Any] = dict(load_example(REPO, "long-running.yaml")["spec"])
    sessions.create(NAME, spec)
    sessions.wait_phase(NAME, "Running", timeout=90)
    assert NEW_CIDR not in policy_cidrs(networking, sessions.namespace)

    egress = [{"cidr": NEW_CIDR, "ports": [{"port": 5432}]}]
    sessions.patch(NAME, {"spec": {"network": {"egress": egress}}})
    wait_for(
        lambda: NEW_CIDR in policy_cidrs(networking, sessions.namespace),
        timeout=60,
        what="the new egress CIDR in the session's NetworkPolicy",
    )
    # And the session goes on being reconciled: suspend reaches the pod.
    sessions.patch(NAME, {"spec": {"suspend": True}})
    sessions.wait_phase(NAME, "Suspended", timeout=60)
    denied = [line for line in refused_requests(operator.log_path) if NAME in line]
    assert denied == [], "\n".join(denied[:5])


def test_rbac_denials_are_recognised_in_the_operator_log(tmp_path: Path) -> None:
    """The run-wide check (the `operator` fixture fails on any RBAC denial in its log)
    recognises the API server's message, and not Pod Security's 403."""
    log = tmp_path / "operator.log"
    log.write_text(
        '{"msg": "reconcile failed: 403 Forbidden: networkpolicies.networking.k8s.io \\"a\\" '
        'is forbidden: User \\"system:serviceaccount:ns:corral\\" cannot patch resource '
        '\\"networkpolicies\\" in API group \\"networking.k8s.io\\""}\n'
        '{"msg": "403 Forbidden: pods \\"b\\" is forbidden: violates PodSecurity"}\n'
    )
    [line] = refused_requests(log)
    assert "cannot patch resource" in line
