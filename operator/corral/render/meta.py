"""What every child of a session shares: labels, owner reference, metadata, wire format."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s
from pydantic import BaseModel

from corral.api.v1alpha1 import API_VERSION, KIND, AgentSession
from corral.render.names import label_value

# A manifest as the API server takes it: camelCase keys, no None values.
Manifest = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SESSION_LABEL = "corral.dev/session"

# `name` is what the children belong to (an AgentSession); `instance` says which one.
APP_NAME = "agentsession"
MANAGER = "corral"

# Values of the component label, one per kind of child.
RUNNER = "runner"
NETWORK = "network"
STATE = "state"


class RenderError(ValueError):
    """The session cannot be turned into children (the controller reports it, no retry)."""


def selector_labels(session: AgentSession) -> dict[str, str]:
    """The labels that find a session's runner pods (Service and NetworkPolicy selectors)."""
    return {
        NAME_LABEL: APP_NAME,
        SESSION_LABEL: label_value(session.metadata.name),
        COMPONENT_LABEL: RUNNER,
    }


def labels(session: AgentSession, component: str) -> dict[str, str]:
    value = label_value(session.metadata.name)
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: value,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGER,
        SESSION_LABEL: value,
    }


def owner_reference(session: AgentSession) -> k8s.V1OwnerReference:
    """Controller reference: garbage collection removes the child with its session."""
    uid = session.metadata.uid
    if not uid:
        raise RenderError(f"session {session.metadata.name} has no uid: read it from the server")
    return k8s.V1OwnerReference(
        api_version=API_VERSION,
        kind=KIND,
        name=session.metadata.name,
        uid=uid,
        controller=True,
        block_owner_deletion=True,
    )


def object_meta(
    session: AgentSession,
    name: str,
    component: str,
    annotations: dict[str, str] | None = None,
) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(
        name=name,
        namespace=session.metadata.namespace,
        labels=labels(session, component),
        annotations=annotations or None,
        owner_references=[owner_reference(session)],
    )


def to_manifest(obj: BaseModel) -> Manifest:
    """A kubernetes client model (pydantic) as the plain dict sent on the wire."""
    return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
