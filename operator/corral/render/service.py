"""The Service in front of the runner: a stable address across pod replacements."""

from __future__ import annotations

from kubernetes import client as k8s

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.render.meta import (
    RUNNER,
    Manifest,
    child_name,
    object_meta,
    selector_labels,
    to_manifest,
)


def service_name(session: AgentSession) -> str:
    """The session's own name when it is a valid Service name, so its URL is predictable."""
    return child_name(session)


def endpoint_url(session: AgentSession) -> str:
    """The runner's URL from inside the cluster (status.endpoint)."""
    namespace = session.metadata.namespace
    return f"http://{service_name(session)}.{namespace}.svc:{runtime.RUNNER_PORT}"


def render_service(session: AgentSession) -> Manifest:
    port = k8s.V1ServicePort(
        name=runtime.RUNNER_PORT_NAME,
        port=runtime.RUNNER_PORT,
        target_port=runtime.RUNNER_PORT_NAME,
        protocol="TCP",
        app_protocol="http",
    )
    service = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=object_meta(session, service_name(session), RUNNER),
        spec=k8s.V1ServiceSpec(type="ClusterIP", selector=selector_labels(session), ports=[port]),
    )
    return to_manifest(service)
