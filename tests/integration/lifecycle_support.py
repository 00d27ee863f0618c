"""Helpers of the lifecycle, resilience and HA tests: sessions, KWOK pod states, volumes.

KWOK drives pods to Running/Ready on its own. To end a pod the way a kubelet would, a
test marks it `kwok.x-k8s.io/status=custom` (KWOK then leaves it alone) and writes the
pod's status itself; such a pod also needs the test to finish its deletion (KWOK no
longer does), which `KubeletStandIn` does. Hybrid sessions need a bound volume and there
is no provisioner: `Volumes` makes PersistentVolumes bound in advance to the exact claims
(other tests on the cluster make unbound ones; a pre-bound PV cannot be taken by them).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from corral.api import runtime
from corral.render.meta import SESSION_LABEL
from corral.testing.kube import wait_for, wait_volumes_available

GROUP, VERSION, PLURAL = "corral.dev", "v1alpha1", "agentsessions"
KWOK_STATUS_ANNOTATION = "kwok.x-k8s.io/status"
RUNNER_LABELS = "app.kubernetes.io/managed-by=corral,app.kubernetes.io/component=runner"

RESULT = {
    "subtype": "success",
    "text": "1\n2\nFizz\n4\nBuzz",
    "numTurns": 2,
    "totalCostUsd": 0.0123,
    "usage": {"inputTokens": 1200, "outputTokens": 80},
    "sessionId": "3f1c2a9e-0d7b-4c55-9e51-7a2b8c0d1e2f",
}


def restricted_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            )
        )
    )
    return name


@dataclass
class Sessions:
    """AgentSessions of one namespace."""

    custom: client.CustomObjectsApi
    namespace: str

    def create(
        self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentSession",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return found

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            return self.get(name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        items: list[dict[str, Any]] = found["items"]
        return items

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body
        )
        return patched

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def wake(self, name: str, value: str) -> None:
        self.patch(name, {"metadata": {"annotations": {runtime.WAKE_ANNOTATION: value}}})

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body = self.get(name)
            return body if (body.get("status") or {}).get("phase") == phase else None

        return wait_for(reached, timeout=timeout, what=f"session {name} phase {phase}")

    def wait_status(self, name: str, check: Any, what: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if check(status) else None

        return wait_for(reached, timeout=timeout, what=f"session {name}: {what}")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def condition_is(status: dict[str, Any], type_: str, value: str, reason: str) -> bool:
    found = condition(status, type_)
    return found is not None and (found["status"], found["reason"]) == (value, reason)


def session_pods(core: client.CoreV1Api, namespace: str, session: str | None = None) -> list[Any]:
    selector = RUNNER_LABELS + (f",{SESSION_LABEL}={session}" if session else "")
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector=selector).items
    return pods


def events(core: client.CoreV1Api, namespace: str, session: str | None = None) -> list[Any]:
    selector = "involvedObject.kind=AgentSession"
    if session:
        selector += f",involvedObject.name={session}"
    found: list[Any] = core.list_namespaced_event(namespace, field_selector=selector).items
    return found


def event_reasons(core: client.CoreV1Api, namespace: str, session: str) -> list[str]:
    return [e.reason for e in events(core, namespace, session)]


def wait_event(
    core: client.CoreV1Api, namespace: str, session: str, reason: str, timeout: float = 30
) -> Any:
    def found() -> Any:
        return next((e for e in events(core, namespace, session) if e.reason == reason), None)

    return wait_for(found, timeout=timeout, what=f"Event {reason} on {session}")


def termination_message(**overrides: Any) -> str:
    return json.dumps({**RESULT, **overrides})


def set_pod_status(
    core: client.CoreV1Api, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """Take the pod from KWOK and give it `status` (as a kubelet would report it)."""
    core.patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": {KWOK_STATUS_ANNOTATION: "custom"}}}
    )
    phase = status.get("phase")
    for _ in range(5):
        # KWOK may still be writing a status it had planned before it saw the annotation.
        time.sleep(0.5)
        core.patch_namespaced_pod_status(name, namespace, {"status": status})
        time.sleep(1.0)
        try:
            now = core.read_namespaced_pod_status(name, namespace).status
        except ApiException as error:
            if error.status == 404:
                return  # already acted on and deleted
            raise
        if now.phase == phase:
            return
    raise AssertionError(f"pod {name} did not keep the status {status}")


def runner_status(state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    return {
        "name": runtime.CONTAINER_NAME,
        "image": "corral.dev/runner:test",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


def terminate_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    *,
    phase: str,
    exit_code: int = 0,
    reason: str = "Completed",
    message: str = "",
    pod_reason: str | None = None,
) -> None:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [
            runner_status(
                {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
            )
        ],
    }
    if pod_reason:
        status["reason"] = pod_reason
        status["message"] = f"The pod was {pod_reason}"
    set_pod_status(core, namespace, name, status)


def fail_pod(core: client.CoreV1Api, namespace: str, name: str, pod_reason: str) -> None:
    """Phase Failed with a pod-level reason (Evicted, DeadlineExceeded) and no result."""
    status = {
        "phase": "Failed",
        "reason": pod_reason,
        "message": f"The pod was {pod_reason}",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"}],
        "containerStatuses": [
            runner_status({"terminated": {"exitCode": 137, "reason": "Error", "message": ""}})
        ],
    }
    set_pod_status(core, namespace, name, status)


def image_pull_failure(core: client.CoreV1Api, namespace: str, name: str) -> None:
    message = 'Back-off pulling image "corral.dev/runner:missing"'
    status = {
        "phase": "Pending",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [
            runner_status({"waiting": {"reason": "ImagePullBackOff", "message": message}})
        ],
    }
    set_pod_status(core, namespace, name, status)


class KubeletStandIn:
    """Finishes the deletion of pods KWOK no longer manages (custom status), as a kubelet
    would once the container stopped; without it they stay Terminating forever."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(ApiException):
                for pod in self.core.list_namespaced_pod(self.namespace).items:
                    annotations = pod.metadata.annotations or {}
                    custom = annotations.get(KWOK_STATUS_ANNOTATION) == "custom"
                    if custom and pod.metadata.deletion_timestamp:
                        with contextlib.suppress(ApiException):
                            self.core.delete_namespaced_pod(
                                pod.metadata.name, self.namespace, grace_period_seconds=0
                            )


@dataclass
class PodHistory:
    """Every runner pod of a namespace seen through a watch: which pods each session ever
    had, and the most pods a session had at one moment (terminating ones included)."""

    core: client.CoreV1Api
    namespace: str
    created: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    alive: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    most_at_once: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> PodHistory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        resource_version = None
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                if resource_version is None:
                    listed = self.core.list_namespaced_pod(
                        self.namespace, label_selector=RUNNER_LABELS
                    )
                    for pod in listed.items:
                        self._seen("ADDED", pod)
                    resource_version = listed.metadata.resource_version
                    self._started.set()
                for event in stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=RUNNER_LABELS,
                    resource_version=resource_version,
                    timeout_seconds=5,
                ):
                    pod = event["object"]
                    resource_version = pod.metadata.resource_version
                    self._seen(event["type"], pod)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    raise AssertionError("pod watch expired: history incomplete") from error
                time.sleep(0.2)
            finally:
                stream.stop()

    def _seen(self, kind: str, pod: Any) -> None:
        session = (pod.metadata.labels or {}).get(SESSION_LABEL, "?")
        with self._lock:
            if kind == "DELETED":
                self.alive[session].discard(pod.metadata.uid)
                return
            self.created[session].add(pod.metadata.uid)
            self.alive[session].add(pod.metadata.uid)
            self.most_at_once[session] = max(self.most_at_once[session], len(self.alive[session]))

    def pods_ever(self, session: str) -> int:
        with self._lock:
            return len(self.created[session])


@dataclass
class Volumes:
    """PersistentVolumes bound in advance to named claims; deleted again on exit."""

    core: client.CoreV1Api
    label: str
    storage_class: str = ""
    names: list[str] = field(default_factory=list)

    def bind(
        self, namespace: str, claims: list[str], size: str = "5Gi", node: str | None = None
    ) -> None:
        """With `node`, each volume is local to that node (node affinity on its hostname)."""
        affinity = None
        if node is not None:
            term = client.V1NodeSelectorTerm(
                match_expressions=[
                    client.V1NodeSelectorRequirement(
                        key="kubernetes.io/hostname", operator="In", values=[node]
                    )
                ]
            )
            affinity = client.V1VolumeNodeAffinity(
                required=client.V1NodeSelector(node_selector_terms=[term])
            )
        made = []
        for claim in claims:
            name = f"{self.label}-{len(self.names)}"
            volume = client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(name=name, labels={"corral-test": self.label}),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": size},
                    access_modes=["ReadWriteOncePod"],
                    persistent_volume_reclaim_policy="Retain",
                    storage_class_name=self.storage_class,
                    host_path=client.V1HostPathVolumeSource(path=f"/tmp/corral-test/{name}"),
                    claim_ref=client.V1ObjectReference(
                        kind="PersistentVolumeClaim", namespace=namespace, name=claim
                    ),
                    node_affinity=affinity,
                ),
            )
            self.core.create_persistent_volume(volume)
            self.names.append(name)
            made.append(name)
        wait_volumes_available(self.core, made)

    def delete(self) -> None:
        for name in self.names:
            with contextlib.suppress(ApiException):
                self.core.delete_persistent_volume(name)


class PhaseHistory:
    """Every distinct status.phase one session had, in order, seen through a watch."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, name: str) -> None:
        self.custom = custom
        self.namespace = namespace
        self.name = name
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PhaseHistory:
        self._thread.start()
        time.sleep(0.5)  # the watch is open before the test creates the session
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        resource_version = None
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    timeout_seconds=5,
                ):
                    body = event["object"]
                    resource_version = body["metadata"]["resourceVersion"]
                    phase = (body.get("status") or {}).get("phase")
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if self._stop.is_set():
                        break
            except ApiException:
                time.sleep(0.2)
            finally:
                stream.stop()


def load_example(repo: Any, name: str) -> dict[str, Any]:
    import yaml

    body: dict[str, Any] = yaml.safe_load((repo / "examples" / name).read_text())
    return body


def own_prefix() -> str:
    """A namespace prefix no other operator of the run watches (theirs start with "t")."""
    import uuid

    return f"c{uuid.uuid4().hex[:6]}-"


def small_resources() -> dict[str, str]:
    """Hundreds of these fit on the two fake nodes (32 CPUs each)."""
    return {"cpu": "100m", "memory": "256Mi", "disk": "64Mi"}


def ensure_storage_class(api_client: client.ApiClient, name: str) -> None:
    """A class without a provisioner: claims bind only to the PVs the tests make."""
    storage = client.StorageV1Api(api_client)
    with contextlib.suppress(ApiException):
        storage.create_storage_class(
            client.V1StorageClass(
                metadata=client.V1ObjectMeta(name=name),
                provisioner="kubernetes.io/no-provisioner",
                volume_binding_mode="Immediate",
            )
        )


def pods_by_session(core: client.CoreV1Api, namespace: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for pod in session_pods(core, namespace):
        found[(pod.metadata.labels or {}).get(SESSION_LABEL, "?")].append(pod)
    return found


def claim_uids(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    claims = core.list_namespaced_persistent_volume_claim(namespace).items
    return {c.metadata.name: c.metadata.uid for c in claims}


def scaled_down_counts(core: client.CoreV1Api, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for event in events(core, namespace):
        if event.reason == "ScaledDown":
            counts[event.involved_object.name] += 1
    return counts
