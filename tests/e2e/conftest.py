"""Fixtures of the e2e suite: a cluster with a real node, the operator, a fake Anthropic API.

The cluster lives in its own state directory ($CORRAL_E2E_STATE_DIR, default
`<state dir>/../e2e`), never the one integration tests share; the fixtures start it (and
stop it at the end unless CORRAL_KEEP_CLUSTER is set), or reuse one that is up.
The fake Anthropic API and the decoys run inside this test process, bound in the node's
"outside" network namespace (corral.testing.outside): pods reach them only through
their NetworkPolicy, and every packet stays inside namespaces this suite made.

Without what a real node needs (root, cgroup v1, the Debian packages of
hack/node-deps.sh) the suite is skipped, with the reason; with CORRAL_E2E=1 (as
hack/test.sh sets it) it fails instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api import runtime
from corral.cluster import control_plane, node, pki
from corral.cluster.layout import Layout
from corral.cluster.paths import state_dir
from corral.config import OperatorConfig
from corral.testing.chart_rbac import chart_identity
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.operator import OperatorProcess
from corral.testing.outside import start_fake_anthropic
from testrun import NAMESPACE_PREFIX, OPERATOR_NAMESPACE, RESTRICTED_LABELS, RUN_ID

# Test modules import these from `conftest`, which may be this module (see testrun.py).
__all__ = ["NAMESPACE_PREFIX", "OPERATOR_NAMESPACE", "RESTRICTED_LABELS", "RUN_ID"]

FAKE_API_PORT = 8089
E2E_ROOT = Path(os.environ.get("CORRAL_E2E_STATE_DIR") or state_dir().parent / "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def real_node_cluster() -> Iterator[Layout]:
    try:
        node.preflight()
    except node.NodeError as error:
        if os.environ.get("CORRAL_E2E") == "1":
            pytest.fail(f"CORRAL_E2E=1 but the real node cannot run here: {error}")
        pytest.skip(f"no real node on this machine: {error}")
    started_here = not control_plane.is_up(E2E_ROOT)
    layout = control_plane.up(root=E2E_ROOT, real_node=True)
    yield layout
    if started_here and not os.environ.get("CORRAL_KEEP_CLUSTER"):
        control_plane.down(E2E_ROOT)
        # `down` leaves nothing behind: no process, namespace, cgroup or mount.
        left = node.leftovers(layout)
        assert not left, f"left behind by `corral cluster down`: {left}"


@pytest.fixture(scope="session")
def kubeconfig(real_node_cluster: Layout) -> Path:
    """Overrides the integration suite's: the API server of the cluster with a real node."""
    return real_node_cluster.kubeconfig(pki.ADMIN)


@pytest.fixture(scope="session")
def node_layout(real_node_cluster: Layout) -> node.NodeLayout:
    return node.NodeLayout(real_node_cluster)


@pytest.fixture(scope="session")
def fake_api(node_layout: node.NodeLayout) -> Iterator[FakeAnthropic]:
    """The fake Messages API at node.OUTSIDE_IP:FAKE_API_PORT, as pods see it."""
    fake = FakeAnthropic()
    start_fake_anthropic(fake, node_layout.outside_netns, node.OUTSIDE_IP, FAKE_API_PORT)
    yield fake
    fake.stop_thread()


@pytest.fixture
def fake(fake_api: FakeAnthropic) -> FakeAnthropic:
    fake_api.reset()
    return fake_api


@pytest.fixture(scope="session")
def operator(
    kubeconfig: Path,
    crd: None,
    operator_namespace: str,
    fake_api: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """`corral operator` for sessions on the real node, with the runner image imported there."""
    config = OperatorConfig.model_validate(
        {
            "namespace": operator_namespace,
            "defaultImage": runtime.DEFAULT_RUNNER_IMAGE,
            # Imported into the node's containerd; there is no registry to pull from.
            "imagePullPolicy": "Never",
            "defaultAnthropicBaseUrl": f"http://{node.OUTSIDE_IP}:{FAKE_API_PORT}",
            "runnerEnv": {"ANTHROPIC_API_KEY": "sk-ant-fake-e2e"},
            "nodeSelector": {node.NODE_LABEL: "true"},
            "terminationGracePeriodSeconds": 5,
            "hybridTerminationGracePeriodSeconds": 20,
        }
    )
    # Exactly the Helm chart's rights, never the admin's (corral.testing.chart_rbac).
    lease_name = f"corral-e2e-{RUN_ID}"
    workdir = tmp_path_factory.mktemp("operator")
    identity = chart_identity(kubeconfig, operator_namespace, lease_name, workdir)
    process = OperatorProcess(
        kubeconfig=identity.kubeconfig,
        config=config,
        workdir=workdir,
        namespaces=[f"{NAMESPACE_PREFIX}*"],
        lease_name=lease_name,
        identity=f"e2e-{RUN_ID}",
    ).start()
    try:
        process.wait_leader()
        yield process
    finally:
        process.stop()
        identity.delete()
    if process.proc is not None and process.proc.returncode not in (0, -15):
        print(process.log_tail(), file=sys.stderr)
