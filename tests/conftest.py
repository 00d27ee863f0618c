"""Fixtures shared by every test suite.

Integration tests run against one real control plane per test run: the one already up
(reused, left running) or one these fixtures start and stop again. Set
CORRAL_TEST_KUBECONFIG to run against another cluster instead.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    external = os.environ.get("CORRAL_TEST_KUBECONFIG")
    if external:
        yield Path(external)
        return
    from corral.cluster import control_plane

    started_here = not control_plane.is_up()
    layout = control_plane.up()
    try:
        yield layout.kubeconfig(control_plane.pki.ADMIN)
    finally:
        if started_here and not os.environ.get("CORRAL_KEEP_CLUSTER"):
            control_plane.down()


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test with Pod Security `restricted` enforced."""
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED_LABELS))
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")
