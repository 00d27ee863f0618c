"""The PersistentVolumeClaim of a Hybrid session: workspace and transcript across wakes.

Access mode ReadWriteOncePod (GA since Kubernetes 1.29): one pod at a time mounts it, which
is what a Hybrid session means (a woken pod starts after its predecessor is gone), and the
kubelet enforces it. `storageAccessMode: ReadWriteOnce` in the operator's config is for CSI
drivers that lack it. The size is bounded by the operator's `maxStorage`.
"""

from __future__ import annotations

from corral.api.units import parse_quantity
from corral.api.v1alpha1 import AgentSession, Pattern, StorageSpec
from corral.config import OperatorConfig
from corral.render.meta import (
    STATE,
    Manifest,
    RenderError,
    child_name,
    object_meta,
    without_none,
)


def pvc_name(session: AgentSession) -> str:
    return child_name(session, "-state")


def storage_too_large(session: AgentSession, config: OperatorConfig) -> str | None:
    """Why spec.storage.size is refused (over the operator's maxStorage); None when it is not."""
    if config.max_storage is None:
        return None
    size = (session.spec.storage or StorageSpec()).size
    if parse_quantity(size) <= parse_quantity(config.max_storage):
        return None
    return (
        f"spec.storage.size {size} is more than this operator allows (maxStorage "
        f"{config.max_storage}): recreate the session with a smaller size, or ask the "
        "cluster operator to raise maxStorage"
    )


def render_pvc(session: AgentSession, config: OperatorConfig) -> Manifest:
    if session.spec.pattern != Pattern.HYBRID:
        raise RenderError(f"only Hybrid sessions keep a volume, not {session.spec.pattern}")
    storage = session.spec.storage or StorageSpec()
    spec = {
        "accessModes": [config.storage_access_mode],
        "resources": {"requests": {"storage": storage.size}},
        "storageClassName": storage.storage_class_name or config.default_storage_class_name,
        "volumeMode": "Filesystem",
    }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(session, pvc_name(session), STATE),
        "spec": without_none(spec),
    }
