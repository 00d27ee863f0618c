"""The operator turns AgentSessions into exactly the right children on a real API server.

- every example in examples/ yields one hardened Pod, a Service, a NetworkPolicy (and a PVC
  for Hybrid) with the concrete limits, security settings, volumes, rules, owner references
  and labels the session asks for, admitted by a Pod Security `restricted` namespace;
- a deleted child comes back; a deleted session takes every child with it (garbage
  collection in kube-controller-manager);
- restarting the operator leaves everything that is already right untouched
  (same resourceVersions);
- a missing credentials Secret is reported (condition + one Warning Event) and the session
  proceeds by itself once the Secret appears;
- what one session's start costs in API requests, counted by the API server itself
  (`test_api_requests_per_session`, which prints docs/measurements/api-requests.md, and
  writes it with CORRAL_RECORD_MEASUREMENTS=1).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import corral
from corral.api import runtime
from corral.api import v1alpha1 as api
from corral.render.meta import SESSION_LABEL
from corral.testing.chart_rbac import ChartIdentity, chart_identity
from corral.testing.kube import wait_for, wait_volumes_available
from corral.testing.operator import OperatorProcess
from measurement_docs import record
from strategies import CREDENTIALS_EXAMPLE, EXAMPLES_DIR, load_manifest

pytestmark = pytest.mark.integration

SECRET = "anthropic-api-key"
PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
]
DNS_EGRESS = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}
PUBLIC_HTTPS_EGRESS = {
    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}],
    "ports": [{"port": 443, "protocol": "TCP"}],
}
KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}


# --- helpers ---------------------------------------------------------------------------------


def as_dict(api_client: client.ApiClient, obj: Any) -> dict[str, Any]:
    """A client model as the wire-format (camelCase) dict the API server sent."""
    body: dict[str, Any] = api_client.sanitize_for_serialization(obj)
    return body


def get_session(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name
    )
    return body


def create_session(
    custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]
) -> dict[str, Any]:
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, body
    )
    return created


def session_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for found in body.get("status", {}).get("conditions", []):
        if found["type"] == type_:
            return dict(found)
    return None


def wait_phase(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    phases: tuple[str, ...] = ("Running",),
    timeout: float = 60,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = get_session(custom, namespace, name)
        return body if body.get("status", {}).get("phase") in phases else None

    return wait_for(reached, timeout=timeout, what=f"session {name} to be {'/'.join(phases)}")


def children(api_client: client.ApiClient, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Every Pod, Service, NetworkPolicy and PVC in `namespace`, as wire-format dicts."""
    core = client.CoreV1Api(api_client)
    networking = client.NetworkingV1Api(api_client)
    listed = {
        "Pod": core.list_namespaced_pod(namespace).items,
        "Service": core.list_namespaced_service(namespace).items,
        "NetworkPolicy": networking.list_namespaced_network_policy(namespace).items,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim(namespace).items,
    }
    return {kind: [as_dict(api_client, item) for item in items] for kind, items in listed.items()}


def live(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if not item["metadata"].get("deletionTimestamp")]


def resource_versions(
    api_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> dict[str, str]:
    """`kind/name` -> resourceVersion of every session and child in `namespace`."""
    versions = {
        f"AgentSession/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
        for item in custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL
        )["items"]
    }
    for kind, items in children(api_client, namespace).items():
        for item in items:
            versions[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return versions


def settled(
    api_client: client.ApiClient,
    custom: client.CustomObjectsApi,
    namespace: str,
    quiet: float = 3.0,
    timeout: float = 60,
) -> dict[str, str]:
    """resourceVersions once nothing in `namespace` has changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    before = resource_versions(api_client, custom, namespace)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        after = resource_versions(api_client, custom, namespace)
        if after == before:
            return after
        before = after
    raise TimeoutError(f"{namespace} kept changing: {before}")


def create_credentials(core: client.CoreV1Api, namespace: str) -> None:
    """The Secret of examples/credentials-secret.yaml, as a user would apply it."""
    core.create_namespaced_secret(namespace, load_manifest(CREDENTIALS_EXAMPLE))


def owner_reference(session: dict[str, Any]) -> dict[str, Any]:
    meta = session["metadata"]
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "AgentSession",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(name: str, component: str) -> dict[str, str]:
    # No app.kubernetes.io/instance: Helm and Argo CD read it as a release's or app's name.
    return {
        "app.kubernetes.io/name": "agentsession",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "corral",
        "app.kubernetes.io/part-of": "corral",
        "app.kubernetes.io/version": corral.__version__,
        "corral.dev/session": name,
    }


def selector(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "agentsession",
        "corral.dev/session": name,
        "app.kubernetes.io/component": "runner",
    }


@pytest.fixture
def volumes(core: client.CoreV1Api) -> Iterator[Callable[[str, str, str], str]]:
    """Pre-binds a hostPath PersistentVolume to a Hybrid session's claim (there is no
    provisioner on this cluster); the volumes are removed after the test."""
    made: list[str] = []

    def prebind(namespace: str, claim: str, size: str) -> str:
        name = f"{namespace}-{claim}"[:63].rstrip("-")
        volume = client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=name, labels={"corral.dev/test": "true"}),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": size},
                access_modes=["ReadWriteOncePod"],
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/corral-test/{name}"),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=claim),
            ),
        )
        core.create_persistent_volume(volume)
        made.append(name)
        wait_volumes_available(core, [name])
        return name

    yield prebind
    for name in made:
        try:
            core.delete_persistent_volume(name)
        except ApiException as error:
            if error.status != 404:
                raise


# --- 1. the examples -------------------------------------------------------------------------


EXPECTED: dict[str, dict[str, Any]] = {
    "ephemeral.yaml": {
        "name": "fizzbuzz",
        "pattern": "Ephemeral",
        "resources": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
        "scratch": "512Mi",  # home and /tmp: a quarter of the disk each
        "restart_policy": "Never",
        "grace": 30,
        "active_deadline": 1800,
        "ingress_namespaces": [],
        "extra_egress": [],
        "storage": None,
    },
    "long-running.yaml": {
        "name": "docs-assistant",
        "pattern": "LongRunning",
        "resources": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "5Gi"},
        "scratch": "1280Mi",
        "restart_policy": "Always",
        "grace": 30,
        "active_deadline": None,
        "ingress_namespaces": ["platform-tools"],
        "extra_egress": [],
        "storage": None,
    },
    "hybrid.yaml": {
        "name": "repo-janitor",
        "pattern": "Hybrid",
        "resources": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "2Gi"},
        "scratch": "512Mi",
        "restart_policy": "Always",
        "grace": 120,
        "active_deadline": None,
        "ingress_namespaces": [],
        "extra_egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                "ports": [{"port": 22, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
            }
        ],
        "storage": "10Gi",
    },
    "shared.yaml": {
        "name": "review-team",
        "pattern": "Shared",
        "resources": {"cpu": "2", "memory": "3Gi", "ephemeral-storage": "4Gi"},
        "scratch": "1Gi",
        "restart_policy": "Always",
        "grace": 30,
        "active_deadline": None,
        "ingress_namespaces": [],
        "extra_egress": [],
        "storage": None,
    },
}


def _check_pod(pod: dict[str, Any], want: dict[str, Any], session: dict[str, Any]) -> None:
    name = want["name"]
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"] == child_labels(name, "runner")
    assert meta["ownerReferences"] == [owner_reference(session)]
    assert meta["annotations"]["corral.dev/attempt"] == "1"
    runner_spec = json.loads(meta["annotations"][runtime.SPEC_ANNOTATION])
    assert runner_spec["pattern"] == want["pattern"]
    assert runner_spec["maxTurns"] == session["spec"]["maxTurns"]
    assert runner_spec["model"]  # the operator's default filled in where the example has none

    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == want["restart_policy"]
    assert spec["terminationGracePeriodSeconds"] == want["grace"]
    assert spec.get("activeDeadlineSeconds") == want["active_deadline"]
    assert KWOK_TOLERATION in spec["tolerations"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }

    [container] = spec["containers"]
    assert container["name"] == "runner"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # Guaranteed: the KWOK operator runs without the start-up CPU boost (its nodes cannot
    # resize); tests/integration/test_dry_run.py and test_api_requests_per_session cover it.
    assert container["resources"] == {"limits": want["resources"], "requests": want["resources"]}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    env = {var["name"]: var for var in container["env"]}
    assert env["ANTHROPIC_API_KEY"] == {
        "name": "ANTHROPIC_API_KEY",
        "valueFrom": {
            "secretKeyRef": {"name": SECRET, "key": "ANTHROPIC_API_KEY", "optional": False}
        },
    }
    assert "sk-ant-placeholder" not in json.dumps(pod)  # a reference, never a copy of the key
    assert env["HOME"]["value"] == "/home/corral"
    assert env["CORRAL_SESSION_FILE"]["value"] == "/etc/corral/session.json"

    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert set(volumes) == {"state", "home", "tmp", "session-spec"}
    if want["storage"]:
        assert volumes["state"]["persistentVolumeClaim"] == {"claimName": f"{name}-state"}
    else:
        assert volumes["state"]["emptyDir"] == {"sizeLimit": want["resources"]["ephemeral-storage"]}
    assert volumes["home"]["emptyDir"] == {"sizeLimit": want["scratch"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": want["scratch"]}
    assert volumes["session-spec"]["downwardAPI"] == {
        "defaultMode": 0o444,
        "items": [
            {
                "path": "session.json",
                "fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": "metadata.annotations['corral.dev/session-spec']",
                },
            }
        ],
    }
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/session"]["name"] == "state"
    assert mounts["/home/corral"]["name"] == "home"
    assert mounts["/tmp"]["name"] == "tmp"
    assert mounts["/etc/corral"] == {
        "name": "session-spec",
        "mountPath": "/etc/corral",
        "readOnly": True,
    }


def _check_network_policy(
    policy: dict[str, Any], want: dict[str, Any], session: dict[str, Any], operator_ns: str
) -> None:
    name = want["name"]
    assert policy["metadata"]["name"] == name
    assert policy["metadata"]["labels"] == child_labels(name, "network")
    assert policy["metadata"]["ownerReferences"] == [owner_reference(session)]
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": selector(name)}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    sources = [operator_ns, *want["ingress_namespaces"]]
    assert spec["ingress"] == [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                for ns in sources
            ],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
    ]
    assert spec["egress"] == [DNS_EGRESS, PUBLIC_HTTPS_EGRESS, *want["extra_egress"]]


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_yields_exactly_its_children(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    volumes: Callable[[str, str, str], str],
    example: str,
) -> None:
    want = EXPECTED[example]
    name = want["name"]
    manifest = load_manifest(EXAMPLES_DIR / example)
    assert manifest["metadata"]["name"] == name and manifest["spec"]["pattern"] == want["pattern"]
    create_credentials(core, namespace)
    if want["storage"]:
        volume = volumes(namespace, f"{name}-state", want["storage"])
    session = create_session(custom, namespace, manifest)

    def all_children() -> dict[str, list[dict[str, Any]]] | None:
        found = children(api_client, namespace)
        expected = 4 if want["storage"] else 3
        return found if sum(len(items) for items in found.values()) >= expected else None

    wait_for(all_children, timeout=60, what=f"the children of {name}")
    if want["pattern"] != "Hybrid":
        session = wait_phase(custom, namespace, name)
    else:  # Running when the volume binds in time; not required here
        session = wait_phase(custom, namespace, name, ("Pending", "Running"))
    found = children(api_client, namespace)
    # Exactly one of each, no more (wait a moment so a duplicate would have shown up).
    time.sleep(2)
    again = children(api_client, namespace)
    assert {k: [i["metadata"]["uid"] for i in v] for k, v in again.items()} == {
        k: [i["metadata"]["uid"] for i in v] for k, v in found.items()
    }
    [pod] = found["Pod"]  # admitted by the `restricted` namespace: it exists
    [service] = found["Service"]
    [policy] = found["NetworkPolicy"]
    if want["storage"]:
        [pvc] = found["PersistentVolumeClaim"]
    else:
        assert found["PersistentVolumeClaim"] == []

    _check_pod(pod, want, session)
    if want["pattern"] != "Hybrid":
        assert pod["status"]["phase"] == "Running"

    assert service["metadata"]["name"] == name
    assert service["metadata"]["labels"] == child_labels(name, "runner")
    assert service["metadata"]["ownerReferences"] == [owner_reference(session)]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector(name)
    assert service["spec"]["ports"] == [
        {
            "name": "http",
            "port": 8080,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]

    _check_network_policy(policy, want, session, operator.config.namespace)

    if want["storage"]:
        assert pvc["metadata"]["name"] == f"{name}-state"
        assert pvc["metadata"]["labels"] == child_labels(name, "state")
        assert pvc["metadata"]["ownerReferences"] == [owner_reference(session)]
        assert pvc["spec"]["accessModes"] == ["ReadWriteOncePod"]
        assert pvc["spec"]["resources"] == {"requests": {"storage": want["storage"]}}
        assert pvc["spec"]["volumeMode"] == "Filesystem"
        bound = wait_for(
            lambda: (
                core.read_namespaced_persistent_volume_claim(
                    f"{name}-state", namespace
                ).status.phase
                == "Bound"
            ),
            timeout=30,
            what="the claim to bind to the pre-made volume",
        )
        assert bound
        claim = core.read_namespaced_persistent_volume_claim(f"{name}-state", namespace)
        assert claim.spec.volume_name == volume

    status = session["status"]
    assert status["podName"] == pod["metadata"]["name"]
    assert status["serviceName"] == name
    assert status["endpoint"] == f"http://{name}.{namespace}.svc:8080"
    assert status.get("pvcName") == (f"{name}-state" if want["storage"] else None)
    assert status["observedGeneration"] == session["metadata"]["generation"]
    credentials = condition(session, "CredentialsReady")
    assert credentials is not None and credentials["status"] == "True"
    assert pod["metadata"]["name"].startswith(f"{name}-")


# --- 4. children come back, go with their session, and survive an operator restart ---------


def _one(api_client: client.ApiClient, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """The live child of `kind` belonging to session `name` (fails on zero or two)."""
    items = [
        item
        for item in live(children(api_client, namespace)[kind])
        if item["metadata"]["labels"].get("corral.dev/session") == name
    ]
    assert len(items) == 1, [item["metadata"]["name"] for item in items]
    return items[0]


def _replaced(
    api_client: client.ApiClient, namespace: str, kind: str, name: str, old_uid: str
) -> dict[str, Any]:
    def back() -> dict[str, Any] | None:
        items = [
            item
            for item in live(children(api_client, namespace)[kind])
            if item["metadata"]["labels"].get("corral.dev/session") == name
        ]
        fresh = [item for item in items if item["metadata"]["uid"] != old_uid]
        return fresh[0] if len(items) == 1 and fresh else None

    return wait_for(back, timeout=60, what=f"a new {kind} of {name}")


def test_deleted_children_come_back(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    networking = client.NetworkingV1Api(api_client)
    create_credentials(core, namespace)
    spec = {"pattern": "LongRunning", "credentials": {"secretName": SECRET}}
    session = create_session(custom, namespace, session_manifest("keeper", spec))
    session = wait_phase(custom, namespace, "keeper")
    owner = owner_reference(session)

    service = _one(api_client, namespace, "Service", "keeper")
    core.delete_namespaced_service("keeper", namespace)
    again = _replaced(api_client, namespace, "Service", "keeper", service["metadata"]["uid"])
    assert again["metadata"]["name"] == "keeper"
    assert again["metadata"]["ownerReferences"] == [owner]
    assert again["spec"]["selector"] == service["spec"]["selector"] == selector("keeper")
    assert again["spec"]["ports"] == service["spec"]["ports"]

    policy = _one(api_client, namespace, "NetworkPolicy", "keeper")
    networking.delete_namespaced_network_policy("keeper", namespace)
    again = _replaced(api_client, namespace, "NetworkPolicy", "keeper", policy["metadata"]["uid"])
    assert again["metadata"]["ownerReferences"] == [owner]
    assert again["spec"] == policy["spec"]

    pod = _one(api_client, namespace, "Pod", "keeper")
    core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
    again = _replaced(api_client, namespace, "Pod", "keeper", pod["metadata"]["uid"])
    assert again["metadata"]["ownerReferences"] == [owner]
    assert again["metadata"]["annotations"]["corral.dev/attempt"] == "2"
    assert again["metadata"]["name"] != pod["metadata"]["name"]
    assert again["spec"]["containers"][0]["resources"] == pod["spec"]["containers"][0]["resources"]

    def running_again() -> dict[str, Any] | None:
        body = get_session(custom, namespace, "keeper")
        status = body.get("status", {})
        fresh = status.get("podName") == again["metadata"]["name"]
        return body if fresh and status.get("phase") == "Running" else None

    body = wait_for(running_again, timeout=60, what="keeper Running on its new pod")
    assert body["status"]["restarts"] == 1
    assert body["status"]["attempts"] == 2
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.uid={session['metadata']['uid']}"
    ).items
    lost = [e for e in events if e.reason == "PodLost"]
    assert len(lost) == 1 and lost[0].type == "Warning"
    assert pod["metadata"]["name"] in lost[0].message
    # Still exactly one of each.
    found = {kind: live(items) for kind, items in children(api_client, namespace).items()}
    assert {kind: len(items) for kind, items in found.items()} == {
        "Pod": 1,
        "Service": 1,
        "NetworkPolicy": 1,
        "PersistentVolumeClaim": 0,
    }


def test_deleting_the_session_removes_every_child(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    volumes: Callable[[str, str, str], str],
) -> None:
    create_credentials(core, namespace)
    volumes(namespace, "repo-janitor-state", "10Gi")
    for example in ("hybrid.yaml", "long-running.yaml"):
        create_session(custom, namespace, load_manifest(EXAMPLES_DIR / example))

    def all_there() -> bool:
        counts = {kind: len(items) for kind, items in children(api_client, namespace).items()}
        return counts == {"Pod": 2, "Service": 2, "NetworkPolicy": 2, "PersistentVolumeClaim": 1}

    wait_for(all_there, timeout=60, what="the children of both sessions")
    # An unrelated object in the namespace must survive: only owned children go.
    bystander = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
    core.create_namespaced_config_map(namespace, bystander)

    for name in ("repo-janitor", "docs-assistant"):
        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)

    def all_gone() -> bool:
        return not any(children(api_client, namespace).values())

    wait_for(all_gone, timeout=90, interval=0.5, what="garbage collection of every child")
    listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL)
    assert listed["items"] == []
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def _restart(operator: OperatorProcess) -> OperatorProcess:
    """Stop the run's operator and start it again with the very same settings."""
    operator.stop()
    assert operator.proc is not None and operator.proc.returncode is not None
    operator.proc = None
    operator.start()
    operator.wait_leader(timeout=60)
    return operator


def test_operator_restart_changes_nothing(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    volumes: Callable[[str, str, str], str],
) -> None:
    create_credentials(core, namespace)
    volumes(namespace, "repo-janitor-state", "10Gi")
    names = [
        create_session(custom, namespace, load_manifest(EXAMPLES_DIR / example))["metadata"]["name"]
        for example in sorted(EXPECTED)
    ]
    # Every session at rest first, Hybrid included: its claim binds to the pre-made volume
    # on the volume controller's schedule (up to its 15 s resync), and a change arriving
    # after the restart would be the volume controller's doing, not the operator's.
    for name in names:
        wait_phase(custom, namespace, name, timeout=90)
    before = settled(api_client, custom, namespace)
    assert len([k for k in before if k.startswith("Pod/")]) == 4, before

    _restart(operator)

    # The new process lists everything and reconciles every session it leads...
    wait_for(
        lambda: operator.metric("corral_reconcile_duration_seconds_count") >= len(names),
        timeout=60,
        what="the restarted operator to reconcile the sessions",
    )
    time.sleep(8)  # ...and has time to (wrongly) write something
    after = resource_versions(api_client, custom, namespace)
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()}
    assert {k: v for k, v in changed.items() if v[0] != v[1]} == {}
    assert operator.metric("corral_errors_total") == 0


# --- 5. credentials --------------------------------------------------------------------------


def test_missing_secret_is_reported_then_the_session_proceeds(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    spec = {"pattern": "LongRunning", "credentials": {"secretName": "late-key"}}
    created = create_session(custom, namespace, session_manifest("waiting", spec))
    uid = created["metadata"]["uid"]

    def reported() -> dict[str, Any] | None:
        body = get_session(custom, namespace, "waiting")
        found = condition(body, "CredentialsReady")
        return body if found and found["status"] == "False" else None

    body = wait_for(reported, timeout=60, what="the CredentialsReady condition")
    credentials = condition(body, "CredentialsReady")
    assert credentials is not None
    assert credentials["reason"] == "SecretNotFound"
    assert "'late-key'" in credentials["message"]
    assert "'ANTHROPIC_API_KEY'" in credentials["message"]  # says which key to put in it
    assert credentials["observedGeneration"] == 1
    ready = condition(body, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert body["status"]["phase"] == "Pending"

    def warnings() -> list[Any]:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid}"
        ).items
        return [e for e in events if e.reason == "SecretNotFound"]

    [event] = wait_for(warnings, timeout=30, what="the SecretNotFound Event")
    assert event.type == "Warning"
    assert "'late-key'" in event.message
    assert event.involved_object.kind == "AgentSession"
    assert event.involved_object.name == "waiting"
    assert core.list_namespaced_pod(namespace).items == []  # no pod that cannot start

    # The operator looks again every few seconds without writing anything new.
    version = body["metadata"]["resourceVersion"]
    time.sleep(7)
    assert get_session(custom, namespace, "waiting")["metadata"]["resourceVersion"] == version
    assert len(warnings()) == 1 and warnings()[0].count == 1

    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="late-key", labels={"corral.dev/credentials": "true"}),
        string_data={"ANTHROPIC_API_KEY": "sk-x"},
    )
    core.create_namespaced_secret(namespace, secret)
    body = wait_phase(custom, namespace, "waiting", timeout=60)
    credentials = condition(body, "CredentialsReady")
    assert credentials is not None
    assert (credentials["status"], credentials["reason"]) == ("True", "SecretFound")
    ready = condition(body, "Ready")
    assert ready is not None and ready["status"] == "True"
    pod = _one(api_client, namespace, "Pod", "waiting")
    [key] = [v for v in pod["spec"]["containers"][0]["env"] if v["name"] == "ANTHROPIC_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "late-key"


# --- 5b. children of its own: a taken name is reported, hand edits are undone ---------------


def _events(core: client.CoreV1Api, namespace: str, uid: str, reason: str) -> list[Any]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}")
    return [e for e in events.items if e.reason == reason]


def test_a_foreign_service_with_the_sessions_name_stops_the_pod(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    """Issue 11: a 409 AlreadyExists counted as success, whoever owned the object."""
    create_credentials(core, namespace)
    foreign = client.V1Service(
        metadata=client.V1ObjectMeta(name="squatted", labels={"app": "someone-else"}),
        spec=client.V1ServiceSpec(
            selector={"app": "someone-else"}, ports=[client.V1ServicePort(port=80)]
        ),
    )
    core.create_namespaced_service(namespace, foreign)
    spec = {"pattern": "LongRunning", "credentials": {"secretName": SECRET}}
    created = create_session(custom, namespace, session_manifest("squatted", spec))
    uid = created["metadata"]["uid"]

    def reported() -> dict[str, Any] | None:
        body = get_session(custom, namespace, "squatted")
        found = condition(body, "ChildrenReady")
        return body if found and found["status"] == "False" else None

    body = wait_for(reported, timeout=60, what="the ChildrenReady condition")
    children_ready = condition(body, "ChildrenReady")
    assert children_ready is not None and children_ready["reason"] == "NameTaken"
    assert "Service 'squatted'" in children_ready["message"]
    ready = condition(body, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "NameTaken")
    assert body["status"]["phase"] == "Pending"
    [event] = wait_for(
        lambda: _events(core, namespace, uid, "NameTaken"), timeout=30, what="the Warning"
    )
    assert event.type == "Warning" and "'squatted'" in event.message
    # No pod, and the foreign Service is left as it was.
    assert core.list_namespaced_pod(namespace).items == []
    kept = core.read_namespaced_service("squatted", namespace)
    assert kept.spec.selector == {"app": "someone-else"} and not kept.metadata.owner_references
    # Its policy is its own all the same.
    policy = _one(api_client, namespace, "NetworkPolicy", "squatted")
    assert policy["metadata"]["ownerReferences"] == [owner_reference(created)]

    # Once the name is free, the session gets its own Service and starts.
    core.delete_namespaced_service("squatted", namespace)
    body = wait_phase(custom, namespace, "squatted", timeout=90)
    assert condition(body, "ChildrenReady") is None
    service = _one(api_client, namespace, "Service", "squatted")
    assert service["metadata"]["ownerReferences"] == [owner_reference(created)]
    assert len(_events(core, namespace, uid, "NameTaken")) == 1


def test_hand_edits_to_the_policy_and_service_are_undone(
    operator: OperatorProcess,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    """Issue 11: only a hash annotation was compared, so an edited spec stayed edited."""
    networking = client.NetworkingV1Api(api_client)
    create_credentials(core, namespace)
    spec = {"pattern": "LongRunning", "credentials": {"secretName": SECRET}}
    create_session(custom, namespace, session_manifest("guarded", spec))
    wait_phase(custom, namespace, "guarded")
    policy = _one(api_client, namespace, "NetworkPolicy", "guarded")
    service = _one(api_client, namespace, "Service", "guarded")

    # Open the policy to everything, and narrow its selector so it selects no pod at all.
    everywhere = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
    networking.patch_namespaced_network_policy(
        "guarded",
        namespace,
        {
            "spec": {
                "egress": [*policy["spec"]["egress"], everywhere],
                "podSelector": {"matchLabels": {"hand": "edited"}},
            }
        },
    )
    core.patch_namespaced_service(
        "guarded", namespace, {"spec": {"selector": {"app": "elsewhere"}}}
    )

    def restored(kind: str, original: dict[str, Any]) -> dict[str, Any] | None:
        now = _one(api_client, namespace, kind, "guarded")
        edited = now["metadata"]["resourceVersion"] != original["metadata"]["resourceVersion"]
        return now if edited and now["spec"] == original["spec"] else None

    wait_for(lambda: restored("NetworkPolicy", policy), timeout=60, what="the policy restored")
    wait_for(lambda: restored("Service", service), timeout=60, what="the Service restored")
    assert (
        _one(api_client, namespace, "NetworkPolicy", "guarded")["metadata"]["uid"]
        == (policy["metadata"]["uid"])
    )  # put back in place, not recreated


# --- 6. what one session costs in API requests ----------------------------------------------
#
# apiserver_request_total has no client label, and other test runs share the cluster, so
# its deltas mix everybody's requests. The API server's priority and fairness (APF) metrics
# do name who asked: a FlowSchema matches requests by subject, verb and resource, and
# `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` counts each request it
# matched. So the measurement runs its own operator as a ServiceAccount (with the Helm
# chart's RBAC rules) and gives each verb/resource of that ServiceAccount its own
# FlowSchema: every count below is the API server's, and the operator's alone.

MEASURED_SESSIONS = 20
# Before every built-in FlowSchema that matches ServiceAccounts (service-accounts: 9000);
# `exempt` (1) matches system:masters only, which this ServiceAccount is not.
MEASURE_PRECEDENCE = 50
MEASURE_DOC = Path(__file__).resolve().parents[2] / "docs" / "measurements" / "api-requests.md"
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]


@dataclass(frozen=True)
class Bucket:
    """One FlowSchema: requests of the measured operator with these verbs on these resources."""

    label: str
    verbs: list[str]
    group: str
    resources: list[str]
    write: bool = True
    precedence: int = MEASURE_PRECEDENCE
    cluster_scope: bool = False
    non_resource: bool = False


BUCKETS = [
    Bucket("POST pods", ["create"], "", ["pods"]),
    Bucket("POST services", ["create"], "", ["services"]),
    Bucket("POST networkpolicies", ["create"], "networking.k8s.io", ["networkpolicies"]),
    Bucket("POST persistentvolumeclaims", ["create"], "", ["persistentvolumeclaims"]),
    Bucket(
        "PATCH/PUT agentsessions/status",
        ["patch", "update"],
        "corral.dev",
        ["agentsessions/status"],
    ),
    Bucket(
        "any write of agentsessions (spec, metadata)", WRITE_VERBS, "corral.dev", ["agentsessions"]
    ),
    Bucket("PATCH/PUT pods", ["patch", "update"], "", ["pods"]),
    Bucket("PATCH pods/resize (end of the start-up CPU boost)", ["patch"], "", ["pods/resize"]),
    Bucket("DELETE pods", ["delete", "deletecollection"], "", ["pods"]),
    Bucket("POST/PATCH events", ["create", "patch", "update"], "", ["events"]),
    Bucket("leases (leader election)", ["*"], "coordination.k8s.io", ["leases"], write=False),
    Bucket("GET secrets", ["get"], "", ["secrets"], write=False),
    Bucket(
        "any other write",
        WRITE_VERBS,
        "*",
        ["*"],
        precedence=MEASURE_PRECEDENCE + 1,
        cluster_scope=True,
    ),
    Bucket(
        "reads (list, watch, get, discovery)",
        ["*"],
        "*",
        ["*"],
        write=False,
        precedence=MEASURE_PRECEDENCE + 2,
        cluster_scope=True,
        non_resource=True,
    ),
]


def scrape(api_client: client.ApiClient) -> str:
    """The API server's /metrics, as the admin client reads it."""
    method, url, headers, _, _ = api_client.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    response = api_client.call_api(method, url, header_params=headers)
    response.read()
    return str(response.data.decode())


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


class Measurement:
    """The FlowSchemas, RBAC and ServiceAccount kubeconfig of one measured operator."""

    def __init__(
        self, api_client: client.ApiClient, kubeconfig: Path, namespace: str, tag: str
    ) -> None:
        self.api_client = api_client
        self.kubeconfig = kubeconfig
        self.identity: ChartIdentity | None = None
        self.namespace = namespace
        self.tag = tag
        self.account = "corral-measured"
        self.flow = client.FlowcontrolApiserverV1Api(api_client)

    def schema_name(self, index: int) -> str:
        return f"corral-measure-{self.tag}-{index:02d}"

    def setup(self, workdir: Path) -> Path:
        """The chart's ServiceAccount, RBAC (watchNamespaces: this namespace) and Lease, and
        FlowSchemas that count the requests of that ServiceAccount."""
        ns, account = self.namespace, self.account
        self.identity = chart_identity(
            self.kubeconfig, ns, account, workdir, release=account, watch_namespaces=[ns]
        )
        for index, bucket in enumerate(BUCKETS):
            rule: dict[str, Any] = {
                "subjects": [
                    {"kind": "ServiceAccount", "serviceAccount": {"name": account, "namespace": ns}}
                ],
                "resourceRules": [
                    {
                        "verbs": bucket.verbs,
                        "apiGroups": [bucket.group],
                        "resources": bucket.resources,
                        "namespaces": ["*"],
                        "clusterScope": bucket.cluster_scope,
                    }
                ],
            }
            if bucket.non_resource:
                rule["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            self.flow.create_flow_schema(
                {
                    "metadata": {"name": self.schema_name(index)},
                    "spec": {
                        "matchingPrecedence": bucket.precedence,
                        "priorityLevelConfiguration": {"name": "exempt"},
                        "rules": [rule],
                    },
                }
            )
        return self.identity.kubeconfig

    def counts(self) -> dict[str, float]:
        """Requests of the measured operator so far, per bucket label."""
        dispatched = samples(
            scrape(self.api_client), "apiserver_flowcontrol_dispatched_requests_total"
        )
        names = {self.schema_name(i): bucket.label for i, bucket in enumerate(BUCKETS)}
        found = dict.fromkeys(names.values(), 0.0)
        for labels, value in dispatched:
            if labels.get("flow_schema") in names:
                found[names[labels["flow_schema"]]] += value
        return found

    def teardown(self) -> None:
        for index in range(len(BUCKETS)):
            with contextlib.suppress(ApiException):
                self.flow.delete_flow_schema(self.schema_name(index))
        if self.identity is not None:
            self.identity.delete()


def global_writes(text: str) -> dict[str, float]:
    """apiserver_request_total of every client, writes only, by `VERB resource[/sub]`."""
    totals: dict[str, float] = {}
    for labels, value in samples(text, "apiserver_request_total"):
        if labels.get("verb") not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        resource = labels.get("resource", "") + (
            "/" + labels["subresource"] if labels.get("subresource") else ""
        )
        key = f"{labels['verb']} {resource}"
        totals[key] = totals.get(key, 0.0) + value
    return totals


def operator_requests(process: OperatorProcess) -> dict[str, float]:
    """The operator's own count of its requests (corral_kube_requests_total), by verb/kind."""
    import urllib.request

    with urllib.request.urlopen(f"{process.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        f"{labels['verb']} {labels['kind']}": value
        for labels, value in samples(text, "corral_kube_requests_total")
    }


def operator_errors(process: OperatorProcess) -> dict[str, float]:
    """The operator's corral_errors_total by reason (failed and repeated writes)."""
    import urllib.request

    with urllib.request.urlopen(f"{process.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {labels["reason"]: value for labels, value in samples(text, "corral_errors_total")}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0)}


def _write_report(
    n: int,
    per_bucket: dict[str, float],
    own: dict[str, float],
    everyone: dict[str, float],
    lease_rate: float,
    renew_seconds: float,
    seconds: float,
    version: str,
) -> str:
    writes = {k: v for k, v in per_bucket.items() if k in _WRITE_LABELS}
    total = sum(writes.values())
    lines = [
        "# API requests per AgentSession",
        "",
        "Measured by `tests/integration/test_reconcile.py::test_api_requests_per_session`, which",
        "rewrites this file when run with `CORRAL_RECORD_MEASUREMENTS=1`. The counts are the",
        "API server's own: the measured operator runs as a ServiceAccount with the Helm",
        "chart's RBAC, and one FlowSchema per verb/resource of that ServiceAccount makes",
        "`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` count its requests",
        "alone (`apiserver_request_total` has no client label, and other test runs share the",
        "cluster). The operator's own `corral_kube_requests_total` must agree, and does.",
        "",
        f"Scenario: Kubernetes {version} (kube-apiserver, KWOK nodes); {n} LongRunning sessions",
        "(with a credentials Secret) created at once in one",
        "namespace, on KWOK nodes that make pods Ready within a second or two; counted from",
        f"before the first create until nothing changed for a while ({seconds:.0f} s in all).",
        "",
        "| requests of the operator (API server's count) | total | per session |",
        "|---|---:|---:|",
    ]
    for label, value in per_bucket.items():
        lines.append(f"| {label} | {value:.0f} | {value / n:.2f} |")
    lines += [
        f"| **all writes, leases excluded** | **{total:.0f}** | **{total / n:.2f}** |",
        "",
        f"So a session's start costs {total / n:.2f} writes: one create per child (Pod, Service,",
        f"NetworkPolicy) and {per_bucket['PATCH/PUT agentsessions/status'] / n:.2f} status writes"
        " (the first",
        "Pending status is held back briefly, so a pod that is Ready soon costs one write for",
        f"both), {per_bucket['POST/PATCH events'] / n:.2f} Events; plus "
        f"{per_bucket['GET secrets'] / n:.2f} read of the",
        f"credentials Secret; and {per_bucket[RESIZE] / n:.2f} resize (the pod starts with the",
        "operator's start-up CPU limit, lowered in place once it is Ready, on a node that can",
        "resize: KWOK's cannot, so none here; a real node adds one write per session). The",
        "test fails above children + 2 status writes + 1 resize per session.",
        "Reads in the window exclude the watches, which were open before it started.",
        "",
        f"Leader election costs about {lease_rate:.2f} Lease requests a second (a GET and a",
        f"PATCH per renewal; the test operator renews every {renew_seconds:g} s), whatever the",
        "number of sessions; they are not counted per session above.",
        "",
        "The operator's own count (`corral_kube_requests_total`, same window):",
        "",
        "| verb kind | total |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in sorted(own.items())],
        "",
        "For reference, `apiserver_request_total` writes of *every* client in the same window",
        "(scheduler bindings, KWOK's pod status updates, the EndpointSlice controller, the",
        "test's own creates, and whatever other test runs did meanwhile):",
        "",
        "| verb resource | total |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in sorted(everyone.items())],
        "",
    ]
    return "\n".join(lines)


_WRITE_LABELS = {bucket.label for bucket in BUCKETS if bucket.write}
RESIZE = "PATCH pods/resize (end of the start-up CPU boost)"


@pytest.fixture
def measured_namespace(core: client.CoreV1Api, crd: None) -> Iterator[str]:
    """A namespace the run's shared operator does not watch (its prefix is not the run's)."""
    from testrun import NAMESPACE_PREFIX, RESTRICTED_LABELS

    name = f"m{NAMESPACE_PREFIX[1:]}api-requests-{uuid.uuid4().hex[:4]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=RESTRICTED_LABELS))
    )
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_api_requests_per_session(
    api_client: client.ApiClient,
    kubeconfig: Path,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    measured_namespace: str,
    tmp_path: Path,
) -> None:
    from corral.testing.operator import kwok_operator_config

    ns = measured_namespace
    measurement = Measurement(api_client, kubeconfig, ns, measured_namespace.split("-", 1)[0])
    try:
        sa_kubeconfig = measurement.setup(tmp_path)
        process = OperatorProcess(
            kubeconfig=sa_kubeconfig,
            # The boost on: KWOK's nodes cannot resize (their pods report no container
            # resources, so the API server would refuse it), and the operator must see that
            # from the pod and send none. The resize itself: tests/e2e/test_cpu_boost.py.
            config=kwok_operator_config(ns, startupCpuLimit="2"),
            workdir=tmp_path,
            namespaces=[ns],
            lease_name="corral-measured",
            identity=f"measured-{ns[:12]}",
        )
        process.start()
        try:
            process.wait_leader(timeout=60)
            # The FlowSchemas are in force once the operator's lease renewals show up in them.
            wait_for(
                lambda: measurement.counts()["leases (leader election)"] > 0,
                timeout=30,
                what="the FlowSchemas to count the operator's requests",
            )
            create_credentials(core, ns)
            time.sleep(3)  # the operator's initial lists and watches are behind us
            start = time.monotonic()
            before = measurement.counts()
            before_all = global_writes(scrape(api_client))
            before_own = operator_requests(process)

            spec = {"pattern": "LongRunning", "credentials": {"secretName": SECRET}}
            names = [f"s{index:03d}" for index in range(MEASURED_SESSIONS)]
            for name in names:
                create_session(custom, ns, session_manifest(name, spec))

            def all_running() -> bool:
                items = custom.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, ns, api.PLURAL
                )["items"]
                phases = [item.get("status", {}).get("phase") for item in items]
                return phases.count("Running") == MEASURED_SESSIONS

            wait_for(all_running, timeout=120, interval=0.5, what="every session Running")

            def quiet_writes() -> dict[str, float] | None:
                first = measurement.counts()
                time.sleep(6)  # longer than the status deferral and any requeue of a start
                second = measurement.counts()
                same = all(first[k] == second[k] for k in _WRITE_LABELS)
                return second if same else None

            after = wait_for(quiet_writes, timeout=120, interval=0, what="the writes to stop")
            seconds = time.monotonic() - start
            after_all = global_writes(scrape(api_client))
            after_own = operator_requests(process)
            errors = operator_errors(process)
            pods = core.list_namespaced_pod(ns).items
        finally:
            process.stop()
    finally:
        measurement.teardown()

    delta = {label: after[label] - before[label] for label in after}
    own = _delta(after_own, before_own)
    everyone = _delta(after_all, before_all)
    lease_rate = delta.pop("leases (leader election)") / seconds
    version = client.VersionApi(api_client).get_code().git_version
    report = _write_report(
        MEASURED_SESSIONS, delta, own, everyone, lease_rate, process.renew_seconds, seconds, version
    )
    record(MEASURE_DOC, report)

    n = MEASURED_SESSIONS
    children_per_session = 3  # Pod, Service, NetworkPolicy
    # Exactly one create per child: no duplicates, no retried creates. Should it fail, the
    # message tells a repeated create (refused 409, or failed and retried: the errors) from
    # a second pod for a session (never allowed).
    per_session = Counter((pod.metadata.labels or {}).get(SESSION_LABEL) for pod in pods)
    why = f"pods per session {dict(per_session)}; operator errors {errors}"
    assert max(per_session.values(), default=0) <= 1, why
    assert delta["POST pods"] == n, why
    assert delta["POST services"] == n
    assert delta["POST networkpolicies"] == n
    assert delta["POST persistentvolumeclaims"] == 0
    # Status: at least one write per session, at most two (Pending, then Running).
    assert n <= delta["PATCH/PUT agentsessions/status"] <= 2 * n
    # GitOps-safe: the operator never writes a session's spec or metadata (no finalizers,
    # no kopf annotations), and nothing it should not touch.
    assert delta["any write of agentsessions (spec, metadata)"] == 0
    assert delta["PATCH/PUT pods"] == 0
    # No resize of a pod whose node cannot resize (KWOK's): no request to be refused.
    assert delta[RESIZE] == 0
    assert own.get("PATCH pods/resize", 0) == 0
    assert delta["DELETE pods"] == 0
    assert delta["any other write"] == 0
    # One Secret lookup per pod created, at most.
    assert delta["GET secrets"] <= n
    # The budget: every write of a session's start, Events included, fits in its children
    # plus two status writes.
    writes = sum(value for label, value in delta.items() if label in _WRITE_LABELS)
    assert writes <= n * (children_per_session + 2 + 1), delta
    # Two independent counts agree: the API server's and the operator's own.
    assert own.get("POST pods", 0) == delta["POST pods"]
    assert own.get("POST services", 0) == delta["POST services"]
    assert own.get("POST networkpolicies", 0) == delta["POST networkpolicies"]
    assert own.get("PATCH agentsessions/status", 0) == delta["PATCH/PUT agentsessions/status"]
    assert own.get("POST events", 0) == delta["POST/PATCH events"]
    # Every other client's writes include ours (a sanity check of the method).
    assert everyone.get("POST pods", 0) >= delta["POST pods"]
