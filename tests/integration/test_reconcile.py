"""The operator turns AgentSessions into exactly the right children on a real API server.

- every example in examples/ yields one hardened Pod, a Service, a NetworkPolicy (and a PVC
  for Hybrid) with the concrete limits, security settings, volumes, rules, owner references
  and labels the session asks for, admitted by a Pod Security `restricted` namespace;
- a deleted child comes back; a deleted session takes every child with it (garbage
  collection in kube-controller-manager);
- restarting the operator leaves everything that is already right untouched
  (same resourceVersions);
- a missing credentials Secret is reported (condition + one Warning Event) and the session
  proceeds by itself once the Secret appears.

The API-request cost of a session is measured in test_api_requests.py... no: below, in
`test_api_requests_per_session`, from the API server's own metrics.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.api import runtime
from corral.api import v1alpha1 as api
from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess
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
    return {
        "app.kubernetes.io/name": "agentsession",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "corral",
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
                access_modes=["ReadWriteOnce"],
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                host_path=client.V1HostPathVolumeSource(path=f"/tmp/corral-test/{name}"),
                claim_ref=client.V1ObjectReference(namespace=namespace, name=claim),
            ),
        )
        core.create_persistent_volume(volume)
        made.append(name)
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
    assert container["resources"] == {"limits": want["resources"], "requests": want["resources"]}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    env = {var["name"]: var for var in container["env"]}
    assert env["ANTHROPIC_API_KEY"] == {
        "name": "ANTHROPIC_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "ANTHROPIC_API_KEY", "optional": False}},
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
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]

    _check_network_policy(policy, want, session, operator.config.namespace)

    if want["storage"]:
        assert pvc["metadata"]["name"] == f"{name}-state"
        assert pvc["metadata"]["labels"] == child_labels(name, "state")
        assert pvc["metadata"]["ownerReferences"] == [owner_reference(session)]
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert pvc["spec"]["resources"] == {"requests": {"storage": want["storage"]}}
        assert pvc["spec"]["volumeMode"] == "Filesystem"
        bound = wait_for(
            lambda: core.read_namespaced_persistent_volume_claim(f"{name}-state", namespace)
            .status.phase
            == "Bound",
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
    names = []
    for example in sorted(EXPECTED):
        names.append(create_session(custom, namespace, load_manifest(EXAMPLES_DIR / example)))
    for body in names:
        name = body["metadata"]["name"]
        hybrid = body["spec"]["pattern"] == "Hybrid"
        wait_phase(custom, namespace, name, ("Pending", "Running") if hybrid else ("Running",))
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
        metadata=client.V1ObjectMeta(name="late-key"), string_data={"ANTHROPIC_API_KEY": "sk-x"}
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
