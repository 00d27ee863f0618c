"""Service, PersistentVolumeClaim, and what every child shares: owner, labels, names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import corral
from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.render import (
    RenderError,
    endpoint_url,
    network_policy_name,
    pvc_name,
    render_children,
    render_pvc,
    render_service,
    selector_labels,
    service_name,
)
from corral.render.pvc import storage_too_large

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
        "accessModes": ["ReadWriteOncePod"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "5Gi"}},
    }


def test_pvc_access_mode_can_fall_back_to_read_write_once(make_session: SessionFactory) -> None:
    # For CSI drivers without ReadWriteOncePod.
    config = OperatorConfig(storage_access_mode="ReadWriteOnce")
    assert render_pvc(make_session("Hybrid"), config)["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize(
    ("size", "maximum", "refused"),
    [
        ("5Gi", "100Gi", False),
        ("100Gi", "100Gi", False),
        ("101Gi", "100Gi", True),
        ("1Ti", "100Gi", True),
        ("200G", "100Gi", True),
        ("1Ti", None, False),
    ],
)
def test_storage_above_the_operators_maximum_is_refused(
    make_session: SessionFactory, size: str, maximum: str | None, refused: bool
) -> None:
    session = make_session("Hybrid", storage={"size": size})
    message = storage_too_large(session, OperatorConfig(max_storage=maximum))
    assert (message is not None) == refused
    if message is not None:
        assert size in message and "maxStorage" in message and str(maximum) in message


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
        assert labels["app.kubernetes.io/managed-by"] == "corral"
        assert labels["app.kubernetes.io/part-of"] == "corral"
        assert labels["app.kubernetes.io/version"] == corral.__version__
        assert labels["corral.dev/session"] == "demo"
        assert labels["app.kubernetes.io/component"] in {"runner", "network", "state"}
        # A Helm release or Argo CD app reads `instance` as its own: never the session's name.
        assert "app.kubernetes.io/instance" not in labels


def test_selectors_keep_their_labels(make_session: SessionFactory) -> None:
    """Service and NetworkPolicy selectors (and so the labels existing pods carry) are the
    same as before: changing them would leave running pods without their policy."""
    session = make_session(name="demo")
    assert selector_labels(session) == {
        "app.kubernetes.io/name": "agentsession",
        "corral.dev/session": "demo",
        "app.kubernetes.io/component": "runner",
    }


def _upgraded(make_session: SessionFactory, name: str, service_name: str | None) -> AgentSession:
    """A session as the operator finds it, status written by the version before it."""
    session = make_session("Hybrid", name=name)
    return session.model_copy(
        update={"status": session.status.model_copy(update={"service_name": service_name})}
    )


def test_sessions_named_before_keep_their_names(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    # Its name ends like a hash: new sessions of this name get hashed names, but one whose
    # children were made under the old name keeps them (status.serviceName says so), so an
    # upgrade neither orphans its children nor moves its endpoint or volume.
    name = "review-deadbeef"
    fresh = make_session("Hybrid", name=name)
    assert service_name(fresh) != name and pvc_name(fresh) != f"{name}-state"
    old = _upgraded(make_session, name, name)
    assert service_name(old) == network_policy_name(old) == name
    assert pvc_name(old) == f"{name}-state"
    assert selector_labels(old)["corral.dev/session"] == name
    # A status naming anything else picks nothing but the session's own new names.
    for other in ("somebody-else", service_name(fresh), None):
        assert service_name(_upgraded(make_session, name, other)) == service_name(fresh)


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
