"""What every child of a session shares: labels, owner reference, metadata, wire format.

Labels. `app.kubernetes.io/instance` is not set: tools (Helm, Argo CD) read it as the name
of a release or app, and a session name there could collide with one (Argo CD would then
prune the children as its own). The session is named by `corral.dev/session`, which with
`name` and `component` is the selector of the Service and NetworkPolicy; those three never
change for an existing child. `part-of` and `version` say what made the child.
"""

from __future__ import annotations

from typing import Any

from corral import __version__
from corral.api.v1alpha1 import API_VERSION, KIND, AgentSession
from corral.render.names import dns_label, label_value, legacy_dns_label, legacy_label_value

# A manifest as the API server takes it: camelCase keys, no None values. The renderers build
# these dicts directly: the kubernetes client's models cost the operator about 10 MB to
# import and a pydantic validation of every child on every decide, for a dict in the end.
Manifest = dict[str, Any]

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
VERSION_LABEL = "app.kubernetes.io/version"
SESSION_LABEL = "corral.dev/session"

# `name` is what the children belong to (an AgentSession); SESSION_LABEL says which one.
APP_NAME = "agentsession"
MANAGER = "corral"
PART_OF = "corral"

# Values of the component label, one per kind of child.
RUNNER = "runner"
NETWORK = "network"
STATE = "state"


class RenderError(ValueError):
    """The session cannot be turned into children (the controller reports it, no retry)."""


def keeps_legacy_names(session: AgentSession) -> bool:
    """True for a session whose children were named before names were made collision-free
    and would now be named differently (its name ends in `-<8 hex digits>`): it keeps its
    old names, so an upgrade neither orphans its children nor moves its endpoint or volume.
    Its status, written by the operator, says so: status.serviceName is the old name."""
    name = session.metadata.name
    legacy = legacy_dns_label(name)
    return legacy != dns_label(name) and session.status.service_name == legacy


def child_name(session: AgentSession, suffix: str = "") -> str:
    """The name of the session's Service and NetworkPolicy (and, with a suffix, its PVC)."""
    name = session.metadata.name
    if keeps_legacy_names(session):
        return legacy_dns_label(name, suffix)
    return dns_label(name, suffix)


def session_label(session: AgentSession) -> str:
    """The value of SESSION_LABEL: selects the session's pods."""
    name = session.metadata.name
    return legacy_label_value(name) if keeps_legacy_names(session) else label_value(name)


def selector_labels(session: AgentSession) -> dict[str, str]:
    """The labels that find a session's runner pods (Service and NetworkPolicy selectors)."""
    return {
        NAME_LABEL: APP_NAME,
        SESSION_LABEL: session_label(session),
        COMPONENT_LABEL: RUNNER,
    }


def labels(session: AgentSession, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: APP_NAME,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGER,
        PART_OF_LABEL: PART_OF,
        VERSION_LABEL: label_value(__version__),
        SESSION_LABEL: session_label(session),
    }


def owner_reference(session: AgentSession) -> Manifest:
    """Controller reference: garbage collection removes the child with its session."""
    uid = session.metadata.uid
    if not uid:
        raise RenderError(f"session {session.metadata.name} has no uid: read it from the server")
    return {
        "apiVersion": API_VERSION,
        "blockOwnerDeletion": True,
        "controller": True,
        "kind": KIND,
        "name": session.metadata.name,
        "uid": uid,
    }


def object_meta(
    session: AgentSession,
    name: str,
    component: str,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    return without_none(
        {
            "annotations": annotations or None,
            "labels": labels(session, component),
            "name": name,
            "namespace": session.metadata.namespace,
            "ownerReferences": [owner_reference(session)],
        }
    )


def without_none(fields: Manifest) -> Manifest:
    """`fields` without its None values: an optional field left unset is absent on the wire."""
    return {key: value for key, value in fields.items() if value is not None}
