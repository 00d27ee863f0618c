"""The Service in front of the runner: a stable address across pod replacements."""

from __future__ import annotations

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.render.meta import (
    RUNNER,
    Manifest,
    child_name,
    object_meta,
    selector_labels,
)


def service_name(session: AgentSession) -> str:
    """The session's own name when it is a valid Service name, so its URL is predictable."""
    return child_name(session)


def endpoint_url(session: AgentSession) -> str:
    """The runner's URL from inside the cluster (status.endpoint)."""
    namespace = session.metadata.namespace
    return f"http://{service_name(session)}.{namespace}.svc:{runtime.RUNNER_PORT}"


def render_service(session: AgentSession) -> Manifest:
    port = {
        "appProtocol": "http",
        "name": runtime.RUNNER_PORT_NAME,
        "port": runtime.RUNNER_PORT,
        "protocol": "TCP",
        "targetPort": runtime.RUNNER_PORT_NAME,
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(session, service_name(session), RUNNER),
        "spec": {"ports": [port], "selector": selector_labels(session), "type": "ClusterIP"},
    }
