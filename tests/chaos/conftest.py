"""Fixtures of the chaos tests: a control plane of their own, the load, the operator.

The chaos tests kill and restart kube-apiserver and etcd, so they never run on the shared
cluster the integration tests use: they start one in its own state directory
($CORRAL_CHAOS_STATE_DIR, default: beside the default one, named `<name>-chaos`), on
free ports, and stop it afterwards (CORRAL_KEEP_CLUSTER=1 keeps it). Each test gets its own
namespaces, volumes and operator (with exactly the Helm chart's rights).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from chaos_support import session_count
from chaos_world import THREADS, World, lasting_denials, make_namespace
from kubernetes import client, config

from corral.cluster import control_plane, pki
from corral.cluster.build import binary_path
from corral.cluster.paths import state_dir
from corral.testing.chart_rbac import chart_identity, refused_requests
from corral.testing.faults import ControlPlane
from corral.testing.kube import wait_for
from corral.testing.load import Load, Sessions, ensure_storage_class, retrying


def chaos_root() -> Path:
    explicit = os.environ.get("CORRAL_CHAOS_STATE_DIR")
    if explicit:
        return Path(os.path.abspath(explicit))
    default = state_dir()
    return default.with_name(f"{default.name}-chaos")


@pytest.fixture(scope="session")
def chaos_cluster() -> Iterator[ControlPlane]:
    root = chaos_root()
    control_plane.up(root=root)
    plane = ControlPlane(root)
    try:
        yield plane
    finally:
        if not os.environ.get("CORRAL_KEEP_CLUSTER"):
            control_plane.down(root=root)


@pytest.fixture(scope="session")
def chaos_kubeconfig(chaos_cluster: ControlPlane) -> Path:
    return chaos_cluster.layout.kubeconfig(pki.ADMIN)


def api_client_for(kubeconfig: Path) -> client.ApiClient:
    """A client with a connection pool big enough for the creating threads."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = THREADS * 2
    return client.ApiClient(configuration)


@pytest.fixture(scope="session")
def chaos_api(chaos_kubeconfig: Path) -> client.ApiClient:
    return api_client_for(chaos_kubeconfig)


@pytest.fixture(scope="session")
def chaos_crd(chaos_kubeconfig: Path, chaos_api: client.ApiClient) -> None:
    manifest = subprocess.run(
        [sys.executable, "-m", "corral.cli", "crd"], capture_output=True, text=True, check=True
    ).stdout
    subprocess.run(
        [str(binary_path("kubectl")), f"--kubeconfig={chaos_kubeconfig}", "apply",
         "--server-side", "--force-conflicts", "-f", "-"],
        input=manifest, capture_output=True, text=True, check=True,
    )  # fmt: skip
    extensions = client.ApiextensionsV1Api(chaos_api)

    def established() -> bool:
        found = extensions.read_custom_resource_definition("agentsessions.corral.dev")
        return any(
            c.type == "Established" and c.status == "True" for c in found.status.conditions or []
        )

    wait_for(established, timeout=30, what="the AgentSession CRD to be established")
    ensure_storage_class(client.StorageV1Api(chaos_api))


@pytest.fixture
def chaos_load() -> Load:
    """The sessions a test's world is made for (a test module may override it)."""
    return Load.mixed(session_count())


@pytest.fixture
def world(
    chaos_load: Load,
    chaos_cluster: ControlPlane,
    chaos_kubeconfig: Path,
    chaos_api: client.ApiClient,
    chaos_crd: None,
    tmp_path: Path,
) -> Iterator[World]:
    core = client.CoreV1Api(chaos_api)
    custom = client.CustomObjectsApi(chaos_api)
    prefix = f"x{uuid.uuid4().hex[:6]}-"
    system = make_namespace(core, f"{prefix}system")
    namespace = make_namespace(core, f"{prefix}load")
    lease = f"{prefix}chaos"
    identity = chart_identity(
        chaos_kubeconfig, system, lease, tmp_path, watch_namespaces=[namespace]
    )
    load = chaos_load
    world = World(
        plane=chaos_cluster,
        kubeconfig=chaos_kubeconfig,
        api=chaos_api,
        core=core,
        custom=custom,
        system=system,
        namespace=namespace,
        identity=identity,
        workdir=tmp_path,
        load=load,
        sessions=Sessions(custom, namespace),
        pool=ThreadPoolExecutor(THREADS),
        lease=lease,
    )
    world.bind_volumes(load.hybrid)
    try:
        yield world
    finally:
        world.pool.shutdown(wait=False, cancel_futures=True)
        for process in world.operators:
            process.stop()
        control_plane.up(root=chaos_cluster.root)  # whatever a failed test left killed
        refused = [line for p in world.operators for line in refused_requests(p.log_path)]
        denied = lasting_denials(chaos_api, refused)
        for name in (namespace, system):
            retrying(lambda name=name: core.delete_namespace(name), ok_statuses=(404,))
        for volume in world.volumes:
            retrying(
                lambda volume=volume: core.delete_persistent_volume(volume), ok_statuses=(404,)
            )
        identity.delete()
        assert not denied, "the chart's RBAC refused the operator:\n" + "\n".join(denied[:10])
