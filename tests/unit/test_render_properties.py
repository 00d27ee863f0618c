"""Properties of rendering any valid session: it never fails and its output is well formed."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from kubernetes import client as k8s
from pydantic import BaseModel

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession, AgentSessionSpec, Pattern, Toleration
from corral.config import OperatorConfig
from corral.render import render_children, selector_labels
from corral.render.cpu_boost import millicores
from strategies import sessions

DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_ANNOTATIONS = 256 * 1024
METADATA = ipaddress.ip_address("169.254.169.254")

CONFIG = OperatorConfig()
MODELS: dict[str, type[BaseModel]] = {
    "Pod": k8s.V1Pod,
    "Service": k8s.V1Service,
    "NetworkPolicy": k8s.V1NetworkPolicy,
    "PersistentVolumeClaim": k8s.V1PersistentVolumeClaim,
}
PROPERTY = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.fullmatch(name))


def assert_well_formed(child: dict[str, Any], session: AgentSession) -> None:
    meta = child["metadata"]
    name = meta["name"]
    assert len(name) <= 63 and DNS_1123_LABEL.fullmatch(name), name
    if child["kind"] == "Service":
        assert DNS_1035_LABEL.fullmatch(name), name
    assert meta["namespace"] == session.metadata.namespace
    for key, value in meta["labels"].items():
        assert valid_label_key(key), key
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    annotations = meta.get("annotations", {})
    assert sum(len(k) + len(v.encode()) for k, v in annotations.items()) <= MAX_ANNOTATIONS
    (owner,) = meta["ownerReferences"]
    assert owner["uid"] == session.metadata.uid and owner["controller"] is True
    json.dumps(child)  # plain JSON, nothing left for a serializer to guess
    # The kubernetes client's own models accept it and give the same wire form back.
    model = MODELS[child["kind"]].model_validate(child)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == child


def assert_pod(pod: dict[str, Any], session: AgentSession) -> None:
    (container,) = pod["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    # Equal, but a CPU limit may start higher (the start-up boost): never lower.
    assert {**limits, "cpu": requests["cpu"]} == requests
    assert millicores(limits["cpu"]) >= millicores(requests["cpu"])
    ephemeral = session.spec.pattern == Pattern.EPHEMERAL
    assert pod["spec"]["restartPolicy"] == ("Never" if ephemeral else "Always")
    assert selector_labels(session).items() <= pod["metadata"]["labels"].items()
    carried = pod["metadata"]["annotations"][runtime.SPEC_ANNOTATION]
    resolved = AgentSessionSpec.model_validate_json(carried)
    # All of the spec but its placement, which is the pod's, not the runner's.
    assert resolved.scheduling is None
    restored = {"model": session.spec.model, "scheduling": session.spec.scheduling}
    assert resolved.model_copy(update=restored) == session.spec
    assert resolved.model == (session.spec.model or CONFIG.default_model)
    scheduling = session.spec.scheduling
    for key, value in (scheduling.node_selector if scheduling else {}).items():
        assert valid_label_key(key), key
        assert pod["spec"]["nodeSelector"][key] == value
    # Each of the session's tolerations once (empty and absent are the same to the server).
    placed = [Toleration.model_validate(t).identity() for t in pod["spec"].get("tolerations", [])]
    assert len(set(placed)) == len(placed)
    for toleration in scheduling.tolerations if scheduling else []:
        assert toleration.identity() in placed


def assert_network_policy(policy: dict[str, Any]) -> None:
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None:
                continue
            network = ipaddress.ip_network(block["cidr"])  # strict: canonical form only
            holes = [ipaddress.ip_network(h) for h in block.get("except", [])]
            for hole in holes:
                assert hole.version == network.version
                assert hole.subnet_of(network) and hole != network  # type: ignore[arg-type]
            if METADATA in network:
                assert any(METADATA in hole for hole in holes)


@PROPERTY
@given(sessions())
def test_rendering_any_valid_session_gives_well_formed_children(session: AgentSession) -> None:
    children = render_children(session, CONFIG, attempt=0)
    for child in children.all():
        assert_well_formed(child, session)
    assert_pod(children.pod, session)
    assert_network_policy(children.network_policy)
    assert (children.pvc is not None) == (session.spec.pattern == Pattern.HYBRID)
    assert children.service["spec"]["selector"] == selector_labels(session)


@PROPERTY
@given(sessions())
def test_rendering_is_deterministic(session: AgentSession) -> None:
    assert render_children(session, CONFIG, 2) == render_children(session, CONFIG, 2)
    assert (
        render_children(session, CONFIG, 2).pod["metadata"]["name"]
        != render_children(session, CONFIG, 3).pod["metadata"]["name"]
    )
