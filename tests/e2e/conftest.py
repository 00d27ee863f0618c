"""Fixtures of the e2e suite: a cluster with a real node, Corral installed with Helm, a fake
Anthropic API.

The cluster lives in its own state directory ($CORRAL_E2E_STATE_DIR, default
`<state dir>/../e2e`), never the one integration tests share; the fixtures start it (and
stop it at the end unless CORRAL_KEEP_CLUSTER is set), or reuse one that is up.
The fake Anthropic API and the decoys run inside this test process, bound in the node's
"outside" network namespace (corral.testing.outside): pods reach them only through
their NetworkPolicy, and every packet stays inside namespaces this suite made.
Corral is installed as a user installs it (`helm install` of helm/corral, the operator as
pods with in-cluster configuration and only the chart's RBAC, the session gateway on as by
default); see `operator` below. Tests talk to sessions as a user does: through the
gateway, by the API server's service proxy, with a ServiceAccount's token (`gateway`).

Without what a real node needs (root, cgroup v1, the Debian packages of
hack/node-deps.sh) the suite is skipped, with the reason; with CORRAL_E2E=1 (as
hack/test.sh sets it) it fails instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    DEAR_MODEL,
    DURABLE_WAKE_LEAD_SECONDS,
    EGRESS_NAMES,
    MODEL_KEY,
    MODEL_KEY_SECRET,
    GatewayClient,
    Release,
    make_user,
)
from failure_story import story
from kubernetes import client
from node_fault_support import BackgroundLoad, PodLedger, start_background_load, watch_pods

from corral.cluster import control_plane, node, pki
from corral.cluster.layout import REAL_NODE_IP, Layout
from corral.cluster.paths import state_dir
from corral.config import ModelProxyConfig
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import create_namespace
from corral.testing.outside import start_fake_anthropic
from testrun import NAMESPACE_PREFIX, OPERATOR_NAMESPACE, RESTRICTED_LABELS, RUN_ID

# Test modules import these from `conftest`, which may be this module (see testrun.py).
__all__ = ["NAMESPACE_PREFIX", "OPERATOR_NAMESPACE", "RESTRICTED_LABELS", "RUN_ID"]

FAKE_API_PORT = 8089


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the story of its namespace (failure_story), taken
    before the namespace's teardown deletes what would explain the failure."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    values = getattr(item, "funcargs", {})
    release = values.get("operator")
    if not isinstance(release, Release):
        return
    namespace = values.get("namespace")
    fake = values.get("fake")
    try:
        text = story(
            release,
            namespace if isinstance(namespace, str) else None,
            fake if isinstance(fake, FakeAnthropic) else None,
        )
    except Exception as error:  # the story must never hide the failure it explains
        text = f"(no story: {type(error).__name__}: {error})"
    report.sections.append(("corral story", text))


E2E_ROOT = Path(os.environ.get("CORRAL_E2E_STATE_DIR") or state_dir().parent / "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
    # test_release.py upgrades, fails over and finally uninstalls the release that every
    # other test uses: it runs last. test_main_job_real_node.py installs the chart as
    # `corral up` does (release corral in corral-system, the cluster-wide session roles)
    # and uninstalls it: it runs first, before the suite's own release exists.
    order = {"test_main_job_real_node.py": 0, "test_release.py": 2}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).name, 1))


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
    fake.expect_key(MODEL_KEY)
    start_fake_anthropic(fake, node_layout.outside_netns, node.OUTSIDE_IP, FAKE_API_PORT)
    yield fake
    fake.stop_thread()


@pytest.fixture
def fake(fake_api: FakeAnthropic) -> FakeAnthropic:
    fake_api.reset()
    fake_api.expect_key(MODEL_KEY)
    return fake_api


def release_values(layout: Layout) -> dict[str, Any]:
    """What a user of this cluster sets: where the operator and the sessions run, the API
    server's endpoint for the operator's NetworkPolicy, and the model proxy: the upstream
    (the fake model), the Secret with the key, and the gateway's egress to the upstream."""
    return {
        "nodeSelector": {node.NODE_LABEL: "true"},
        "networkPolicy": {
            # The `kubernetes` Service's endpoint as pods see it: the node's relay.
            "apiServer": {
                "cidrs": [f"{REAL_NODE_IP}/32"],
                "ports": [layout.ports["apiserver"]],
            }
        },
        # The gateway's egress proxy resolves the egress tests' names from this map (their
        # DNS) and may connect only to the outside namespace's test servers.
        "gateway": {
            "egressProxy": {
                "staticHosts": EGRESS_NAMES,
                "to": [{"cidr": f"{node.OUTSIDE_IP}/32"}],
            },
            "modelProxy": {
                "enabled": True,
                "upstreamUrl": f"http://{node.OUTSIDE_IP}:{FAKE_API_PORT}",
                "apiKeySecret": {"name": MODEL_KEY_SECRET},
                "upstreamEgress": {
                    "to": [{"ipBlock": {"cidr": f"{node.OUTSIDE_IP}/32"}}],
                    "ports": [FAKE_API_PORT],
                },
                "statusIntervalSeconds": 2,
                "prices": [
                    *(
                        row.model_dump(by_alias=True, exclude_none=True)
                        for row in ModelProxyConfig(url="http://x:1").prices
                    ),
                    {
                        "model": DEAR_MODEL,
                        "input": 1000,
                        "output": 1000,
                        "cacheRead": 0,
                        "cacheWrite": 0,
                    },
                ],
            },
        },
        # Sessions need no node selector: KWOK's nodes are tainted, so a session goes to the
        # real node unless its own `spec.scheduling` tolerates them (the background load).
        "config": {
            "terminationGracePeriodSeconds": 5,
            "hybridTerminationGracePeriodSeconds": 20,
            "durableWakeLeadSeconds": DURABLE_WAKE_LEAD_SECONDS,
        },
    }


@pytest.fixture(scope="session")
def operator(
    kubeconfig: Path,
    real_node_cluster: Layout,
    crd: None,
    operator_namespace: str,
    fake_api: FakeAnthropic,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """Corral as a user installs it: `helm install` of helm/corral, whose operator runs as
    two pods on the real node (images imported into its containerd), in-cluster, with only
    the chart's RBAC, one of them leading through the chart's Lease."""
    release = Release(
        name="corral",
        namespace=operator_namespace,
        kubeconfig=kubeconfig,
        workdir=tmp_path_factory.mktemp("helm"),
        api_client=api_client,
    )
    model_key = client.V1Secret(
        metadata=client.V1ObjectMeta(name=MODEL_KEY_SECRET),
        string_data={"ANTHROPIC_API_KEY": MODEL_KEY},
    )
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_secret(operator_namespace, model_key)
    except client.ApiException as error:
        if error.status != 409:
            raise
    try:
        release.install(release_values(real_node_cluster))
        release.wait_leader()
    except (AssertionError, TimeoutError):
        print(release.diagnose(), file=sys.stderr)
        raise
    yield release
    if release.installed():
        print(release.operator_logs(), file=sys.stderr)
        release.helm("uninstall", release.name, "-n", release.namespace, "--wait", check=False)


SESSION_USER_ROLE = client.V1RoleRef(
    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="corral-session-user"
)


@pytest.fixture
def user_token(
    operator: Release, core: client.CoreV1Api, api_client: client.ApiClient, namespace: str
) -> str:
    """A session user: a ServiceAccount of the test namespace bound there (RoleBinding) to
    the chart's ClusterRole corral-session-user; its token from TokenRequest."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    return make_user(core, rbac, namespace, "e2e-user", SESSION_USER_ROLE)


@pytest.fixture
def gateway(operator: Release, real_node_cluster: Layout, user_token: str) -> GatewayClient:
    """That user's way to the test namespace's sessions: the gateway, by the API server's
    service proxy, with nothing but the user's token."""
    return GatewayClient(real_node_cluster, operator.namespace, user_token, release=operator.name)


@pytest.fixture
def ledger(core: client.CoreV1Api, namespace: str) -> Iterator[PodLedger]:
    """Every session pod of the test's namespace over the whole test (a watch)."""
    yield from watch_pods(core, namespace)


@pytest.fixture(scope="session")
def kwok_load(
    operator: Release, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> Iterator[BackgroundLoad]:
    """`CORRAL_E2E_LOAD_SESSIONS` (default 200) sessions of mixed patterns on KWOK's nodes,
    reconciled by the chart's operator beside the real node's sessions: the node-fault
    tests check that their fault left every one of them as it was. Made once, at the first
    test that asks (the later tests of the run share the cluster with it)."""
    name = create_namespace(core, f"{NAMESPACE_PREFIX}kwok-load", RESTRICTED_LABELS)
    count = int(os.environ.get("CORRAL_E2E_LOAD_SESSIONS", "200"))
    background = start_background_load(core, custom, name, count)
    yield background
    core.delete_namespace(name, propagation_policy="Background")
    core.delete_collection_persistent_volume(label_selector=f"corral-load={name}")
