"""Pure functions from an AgentSession (and the operator's config) to its desired children.

No I/O and no clock: the controller compares what these return with what exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.api.v1alpha1 import AgentSession, Pattern
from corral.config import OperatorConfig
from corral.render.meta import Manifest, RenderError, labels, owner_reference, selector_labels
from corral.render.network_policy import network_policy_name, render_network_policy
from corral.render.pod import (
    ATTEMPT_ANNOTATION,
    RESTART_HASH_ANNOTATION,
    pod_name,
    render_pod,
    restart_hash,
    spec_json,
)
from corral.render.pvc import pvc_name, render_pvc
from corral.render.service import endpoint_url, render_service, service_name


@dataclass(frozen=True)
class Children:
    """Everything a session should own; whether the pod should run is the controller's call."""

    pod: Manifest
    service: Manifest
    network_policy: Manifest
    pvc: Manifest | None

    def all(self) -> list[Manifest]:
        found = [self.pvc, self.network_policy, self.service, self.pod]
        return [child for child in found if child is not None]


def render_children(session: AgentSession, config: OperatorConfig, attempt: int) -> Children:
    hybrid = session.spec.pattern == Pattern.HYBRID
    return Children(
        pod=render_pod(session, config, attempt),
        service=render_service(session),
        network_policy=render_network_policy(session, config),
        pvc=render_pvc(session, config) if hybrid else None,
    )


__all__ = [
    "ATTEMPT_ANNOTATION",
    "RESTART_HASH_ANNOTATION",
    "Children",
    "Manifest",
    "RenderError",
    "endpoint_url",
    "labels",
    "network_policy_name",
    "owner_reference",
    "pod_name",
    "pvc_name",
    "render_children",
    "render_network_policy",
    "render_pod",
    "render_pvc",
    "render_service",
    "restart_hash",
    "selector_labels",
    "service_name",
    "spec_json",
]
