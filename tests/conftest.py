"""Fixtures shared by every test suite.

Integration tests run against one real control plane per test run: the one already up
(reused, left running) or one these fixtures start and stop again. Set
CORRAL_TEST_KUBECONFIG to run against another cluster instead.

Namespaces of one test run share a random prefix, and the run's operator watches only
that prefix, so concurrent runs on one cluster stay out of each other's way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from corral.testing.chart_rbac import ChartIdentity, chart_identity, refused_requests
from corral.testing.kube import create_namespace, wait_for
from corral.testing.operator import OperatorProcess, kwok_operator_config
from testrun import NAMESPACE_PREFIX, OPERATOR_NAMESPACE, RESTRICTED_LABELS, RUN_ID

__all__ = ["NAMESPACE_PREFIX", "OPERATOR_NAMESPACE", "RESTRICTED_LABELS", "RUN_ID"]
REPO = Path(__file__).resolve().parent.parent

# Hypothesis's per-example deadline (200 ms) and its too-slow check are timed assertions:
# on a shared, loaded machine a correct build overruns them and the test fails as flaky.
settings.register_profile("corral", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("corral")


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    external = os.environ.get("CORRAL_TEST_KUBECONFIG")
    if external:
        yield Path(external)
        return
    from corral.cluster import control_plane

    with control_plane.running() as layout:
        yield layout.kubeconfig(control_plane.pki.ADMIN)


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test with Pod Security `restricted` enforced."""
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:36].strip("-")
    name = f"{NAMESPACE_PREFIX}{stem}-{uuid.uuid4().hex[:4]}"
    create_namespace(core, name, RESTRICTED_LABELS)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def crd(kubeconfig: Path, api_client: client.ApiClient) -> None:
    """The AgentSession CRD, generated fresh from the models and established."""
    manifest = subprocess.run(
        [sys.executable, "-m", "corral.cli", "crd"], capture_output=True, text=True, check=True
    ).stdout
    from corral.cluster.build import binary_path

    subprocess.run(
        [
            str(binary_path("kubectl")),
            f"--kubeconfig={kubeconfig}",
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ],
        input=manifest,
        capture_output=True,
        text=True,
        check=True,
    )
    extensions = client.ApiextensionsV1Api(api_client)

    def established() -> bool:
        found = extensions.read_custom_resource_definition("agentsessions.corral.dev")
        return any(
            c.type == "Established" and c.status == "True" for c in found.status.conditions or []
        )

    wait_for(established, timeout=30, what="the AgentSession CRD to be established")


@pytest.fixture(scope="session")
def operator_namespace(core: client.CoreV1Api, kubeconfig: Path) -> Iterator[str]:
    try:
        create_namespace(core, OPERATOR_NAMESPACE, RESTRICTED_LABELS)
    except ApiException as error:
        if error.status != 409:
            raise
    yield OPERATOR_NAMESPACE
    core.delete_namespace(OPERATOR_NAMESPACE, propagation_policy="Background")


ChartRbac = Callable[..., Path]


@pytest.fixture
def chart_rbac(kubeconfig: Path, tmp_path: Path) -> Iterator[ChartRbac]:
    """`chart_rbac(namespace, lease_name, watch_namespaces=())`: a kubeconfig for an operator
    with exactly the Helm chart's rights (its ServiceAccount, RBAC and Lease applied in
    `namespace`); the cluster-scoped objects are deleted after the test."""
    made: list[ChartIdentity] = []

    def make(namespace: str, lease_name: str, watch_namespaces: Sequence[str] = ()) -> Path:
        identity = chart_identity(
            kubeconfig, namespace, lease_name, tmp_path, watch_namespaces=watch_namespaces
        )
        made.append(identity)
        return identity.kubeconfig

    yield make
    for identity in made:
        identity.delete()


@pytest.fixture(scope="session")
def operator_identity(
    kubeconfig: Path, operator_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartIdentity]:
    """The run operator's identity: the chart's cluster-wide RBAC, bound to its
    ServiceAccount in the operator namespace (never cluster-admin)."""
    identity = chart_identity(
        kubeconfig, operator_namespace, f"corral-{RUN_ID}", tmp_path_factory.mktemp("identity")
    )
    yield identity
    identity.delete()


@pytest.fixture(scope="session")
def operator(
    operator_identity: ChartIdentity,
    crd: None,
    operator_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One `corral operator` process for the run, watching this run's namespaces, with
    exactly the rights the Helm chart gives it."""
    process = OperatorProcess(
        kubeconfig=operator_identity.kubeconfig,
        # A short lead, so that a wake ahead of an agent's durable task is seen in seconds.
        config=kwok_operator_config(operator_namespace, durableWakeLeadSeconds=3),
        workdir=tmp_path_factory.mktemp("operator"),
        namespaces=[f"{NAMESPACE_PREFIX}*"],
        lease_name=f"corral-{RUN_ID}",
        identity=f"main-{RUN_ID}",
    ).start()
    process.wait_leader()
    yield process
    process.stop()
    denied = refused_requests(process.log_path)
    assert not denied, "the operator was refused by the chart's RBAC:\n" + "\n".join(denied[:10])
    # SIGTERM is a requested stop: exit 0 (a pod's restart policy and alerts read it).
    assert process.proc is not None and process.proc.returncode == 0, process.log_tail()
