"""A compact, typed view of a session pod: what the lifecycle decisions read.

The operator keeps these instead of whole pod bodies, which keeps memory flat at
thousands of sessions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral.api import runtime
from corral.api.units import parse_quantity
from corral.render import ATTEMPT_ANNOTATION, RESTART_HASH_ANNOTATION

IMAGE_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# Set on a claim by the scheduler when its volume is made for a pod (WaitForFirstConsumer):
# the node the volume was made on.
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
# How the scheduler (1.34, its VolumeBinding plugin) says a pod cannot go where its bound
# volume is: the volume's node affinity excludes the nodes there are (the words seen on a
# real scheduler, tests/integration), older releases' words for it, or the plugin
# narrowed the nodes to the volume's own and none of them is there.
VOLUME_BINDING_REFUSALS = (
    "didn't match PersistentVolume's node affinity",
    "volume node affinity conflict",
    "[VolumeBinding]",
)


@dataclass(frozen=True, slots=True)
class Terminated:
    exit_code: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    uid: str
    owner_uid: str | None
    attempt: int
    restart_hash: str | None
    # A digest of the runner-spec annotation, not the annotation (up to 200 KiB per pod).
    spec_digest: str | None
    phase: str
    deleting: bool
    ready: bool
    # When the Ready condition last turned True (None while not Ready).
    ready_since: str | None
    reason: str | None
    message: str | None
    started_at: str | None
    created_at: str | None
    restart_count: int
    waiting_reason: str | None
    waiting_message: str | None
    terminated: Terminated | None
    unschedulable: str | None
    # The runner container's CPU limit in the pod's spec (a start-up boost until settled).
    cpu_limit: Decimal | None = None
    # Whether the API server would take a resize of this pod (its node can resize).
    resizable: bool = True
    # The version of the pod this view was made from: the same version is the same view
    # (see Store.pod_at). Not compared: a new version may read the same.
    resource_version: str = field(default="", compare=False)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def ended_detail(pod: PodView) -> str:
    """Why a pod meant to run until deleted (LongRunning, Hybrid) ended, as far as the pod
    says. An eviction for the pod's own disk limit whose runner exits 0 on SIGTERM leaves
    the pod `Succeeded` with no reason at all (only the kubelet's `Evicted` Event on the
    pod says it): say that rather than a bare "Succeeded", which reads as a clean end."""
    if pod.reason:
        return f"{pod.reason}: {pod.message.strip()}" if pod.message else pod.reason
    if pod.phase == "Succeeded":
        return (
            "Succeeded, unasked: the kubelet stopped its runner, as it does when it evicts a "
            "pod for its disk limit; the pod's Events say why"
        )
    return pod.phase


def held_by_volume(message: str, claim: str | None, volume_node: str | None) -> str | None:
    """Why a pod the scheduler cannot place waits, when its volume holds it to a node (a
    node-local volume whose node is gone, not ready or full), naming the node: the
    scheduler's own words ("didn't satisfy plugin(s) [VolumeBinding]") do not. None when
    the volume is not what holds it."""
    if claim is None or not any(words in message for words in VOLUME_BINDING_REFUSALS):
        return None
    where = f"node {volume_node}" if volume_node else "the node its volume is tied to"
    return (
        f"waiting for {where}: the volume of claim {claim} lives there and cannot move, and "
        f"that node is gone, not ready or full; the pod starts once it can take it "
        f"(scheduler: {message})"
    )


def spec_digest(spec_annotation: str) -> str:
    """What PodView keeps of the runner-spec annotation: enough to tell it changed."""
    return hashlib.sha256(spec_annotation.encode()).hexdigest()


def _runner_status(status: dict[str, Any]) -> dict[str, Any]:
    for container in status.get("containerStatuses") or []:
        if container.get("name") == runtime.CONTAINER_NAME:
            return dict(container)
    return {}


def resize_supported(status: dict[str, Any]) -> bool:
    """Whether the API server accepts a resize of the pod, decided as it does (validation's
    isPodResizeRequestSupported): a kubelet that can resize reports each running
    container's resources in its status, so a pod whose first running container reports
    none is on a node that cannot (KWOK's, a kubelet before 1.33) and a resize is refused
    with 422. Knowing it from the pod costs no request, after an operator restart too."""
    for container in status.get("containerStatuses") or []:
        if (container.get("state") or {}).get("running") is not None:
            return container.get("resources") is not None
    return True  # nothing running yet: the API server cannot tell either


def _cpu_limit(spec: dict[str, Any]) -> Decimal | None:
    for container in spec.get("containers") or []:
        if container.get("name") == runtime.CONTAINER_NAME:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("cpu")
            try:
                return parse_quantity(str(limit)) if limit is not None else None
            except ValueError:
                return None
    return None


def pod_view(body: dict[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    annotations = meta.get("annotations") or {}
    owners = meta.get("ownerReferences") or []
    owner_uid = next((o.get("uid") for o in owners if o.get("controller")), None)
    container = _runner_status(status)
    state = container.get("state") or {}
    last_state = container.get("lastState") or {}
    terminated_raw = state.get("terminated") or last_state.get("terminated")
    terminated = (
        Terminated(
            exit_code=int(terminated_raw.get("exitCode", 0)),
            reason=str(terminated_raw.get("reason") or ""),
            message=str(terminated_raw.get("message") or ""),
        )
        if terminated_raw
        else None
    )
    waiting = state.get("waiting") or {}
    unschedulable = None
    ready = False
    ready_since = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            unschedulable = str(condition.get("message") or "no node fits the pod")
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            ready_since = condition.get("lastTransitionTime") if ready else None
    spec_annotation = annotations.get(runtime.SPEC_ANNOTATION)
    try:
        attempt = int(annotations.get(ATTEMPT_ANNOTATION, "0"))
    except ValueError:
        attempt = 0
    return PodView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid")),
        owner_uid=owner_uid,
        attempt=attempt,
        restart_hash=annotations.get(RESTART_HASH_ANNOTATION),
        spec_digest=spec_digest(spec_annotation) if spec_annotation is not None else None,
        phase=str(status.get("phase") or "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        ready=ready,
        ready_since=ready_since,
        reason=status.get("reason"),
        message=status.get("message"),
        started_at=status.get("startTime"),
        created_at=meta.get("creationTimestamp"),
        restart_count=int(container.get("restartCount") or 0),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated=terminated,
        unschedulable=unschedulable,
        cpu_limit=_cpu_limit(body.get("spec") or {}),
        resizable=resize_supported(status),
        resource_version=str(meta.get("resourceVersion") or ""),
    )
