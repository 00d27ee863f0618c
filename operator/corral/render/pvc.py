"""The PersistentVolumeClaim of a Hybrid session: workspace and transcript across wakes."""

from __future__ import annotations

from kubernetes import client as k8s

from corral.api.v1alpha1 import AgentSession, Pattern, StorageSpec
from corral.config import OperatorConfig
from corral.render.meta import STATE, Manifest, RenderError, object_meta, to_manifest
from corral.render.names import dns_label


def pvc_name(session: AgentSession) -> str:
    return dns_label(session.metadata.name, "-state")


def render_pvc(session: AgentSession, config: OperatorConfig) -> Manifest:
    if session.spec.pattern != Pattern.HYBRID:
        raise RenderError(f"only Hybrid sessions keep a volume, not {session.spec.pattern}")
    storage = session.spec.storage or StorageSpec()
    claim = k8s.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=object_meta(session, pvc_name(session), STATE),
        spec=k8s.V1PersistentVolumeClaimSpec(
            # One pod at a time mounts it: a woken pod starts after its predecessor is gone.
            access_modes=["ReadWriteOnce"],
            volume_mode="Filesystem",
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": storage.size}),
            storage_class_name=storage.storage_class_name or config.default_storage_class_name,
        ),
    )
    return to_manifest(claim)
