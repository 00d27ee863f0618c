"""Service, PersistentVolumeClaim, and what every child shares: owner, labels, names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.render import (
    RenderError,
    endpoint_url,
    render_children,
    render_pvc,
    render_service,
    selector_labels,
)

SessionFactory = Callable[..., AgentSession]
PATTERNS = ["Ephemeral", "LongRunning", "Hybrid", "Shared"]


def test_service(make_session: SessionFactory) -> None:
    session = make_session(name="demo")
    service = render_service(session)
    assert service["metadata"]["name"] == "demo"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector_labels(session)
    assert service["spec"]["ports"] == [
        {
            "name": "http",
            "port": runtime.RUNNER_PORT,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]


def test_endpoint_url(make_session: SessionFactory) -> None:
    assert endpoint_url(make_session(name="demo", namespace="team-a")) == (
        f"http://demo.team-a.svc:{runtime.RUNNER_PORT}"
    )
    # A dotted session name is no Service name: the URL follows the Service.
    dotted = make_session(name="v1.demo")
    assert endpoint_url(dotted).startswith(f"http://{render_service(dotted)['metadata']['name']}.")


def test_pvc_defaults(make_session: SessionFactory, config: OperatorConfig) -> None:
    pvc = render_pvc(make_session("Hybrid", name="keeper"), config)
    assert pvc["metadata"]["name"] == "keeper-state"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "5Gi"}},
    }


def test_pvc_from_spec_and_config(make_session: SessionFactory) -> None:
    config = OperatorConfig(default_storage_class_name="standard")
    session = make_session("Hybrid", storage={"size": "20Gi", "storageClassName": "fast"})
    spec = render_pvc(session, config)["spec"]
    assert spec["resources"] == {"requests": {"storage": "20Gi"}}
    assert spec["storageClassName"] == "fast"
    assert render_pvc(make_session("Hybrid"), config)["spec"]["storageClassName"] == "standard"


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning", "Shared"])
def test_only_hybrid_keeps_a_volume(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    with pytest.raises(RenderError):
        render_pvc(make_session(pattern), config)
    assert render_children(make_session(pattern), config, 0).pvc is None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_child_is_owned_and_labelled(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    session = make_session(pattern, name="demo", namespace="team-a", uid="u-1")
    children = render_children(session, config, 0).all()
    assert len(children) == (4 if pattern == "Hybrid" else 3)
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "corral.dev/v1alpha1",
                "kind": "AgentSession",
                "name": "demo",
                "uid": "u-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "agentsession"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "corral"
        assert labels["corral.dev/session"] == "demo"
        assert labels["app.kubernetes.io/component"] in {"runner", "network", "state"}


def test_selector_matches_the_pod_only(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    session = make_session("Hybrid")
    children = render_children(session, config, 0)
    selector = selector_labels(session).items()
    assert selector <= children.pod["metadata"]["labels"].items()
    assert children.pvc is not None
    assert not selector <= children.pvc["metadata"]["labels"].items()
    assert not selector <= children.network_policy["metadata"]["labels"].items()


def test_children_of_one_session_have_distinct_names_per_kind(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    children = render_children(make_session("Hybrid"), config, 0).all()
    keys = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert len(keys) == len(children)
