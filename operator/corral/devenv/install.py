"""Corral installed on the local cluster the way users install it (the Helm chart), what
the examples need before they start, and a user to talk to them as."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from corral.api import runtime
from corral.cluster import node, pki
from corral.cluster.build import binary_path, ensure_built
from corral.cluster.layout import REAL_NODE_IP, Layout
from corral.devenv.model import MODEL_PORT, ModelChoice

CHART = Path(__file__).resolve().parents[3] / "helm" / "corral"
RELEASE = "corral"
OPERATOR_NAMESPACE = "corral-system"
DEMO_NAMESPACE = "demo"
DEMO_USER = "corral-demo-user"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
SESSION_USER_ROLE = "corral-session-user"


class InstallError(RuntimeError):
    """A step of the install failed; the message says which and where to look."""


def kubectl(layout: Layout, *args: str, stdin: str | None = None, check: bool = True) -> str:
    argv = [str(binary_path("kubectl")), f"--kubeconfig={layout.kubeconfig(pki.ADMIN)}", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise InstallError(f"kubectl {' '.join(args[:4])} failed: {done.stderr.strip()}")
    return done.stdout


def apply(layout: Layout, docs: list[dict[str, Any]], namespace: str | None = None) -> None:
    extra = ["-n", namespace] if namespace else []
    kubectl(
        layout,
        "apply",
        "--server-side",
        "--force-conflicts",
        *extra,
        "-f",
        "-",
        stdin=yaml.safe_dump_all(docs),
    )


def namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": RESTRICTED},
    }


MODEL_KEY_SECRET = "corral-model-key"


def chart_values(layout: Layout, model: ModelChoice) -> dict[str, Any]:
    """What a user of this cluster sets: operator, gateway and sessions on the real node;
    the API server's address for the operator's NetworkPolicy; the gateway's model proxy
    with the model as its upstream (the key stays in the gateway: sessions get only a
    per-session credential). One replica of each: a second on the same single node would
    protect nothing."""
    real_node = {node.NODE_LABEL: "true"}
    return {
        "replicaCount": 1,
        "nodeSelector": real_node,
        "networkPolicy": {
            # The `kubernetes` Service's endpoint as pods see it: the node's relay.
            "apiServer": {"cidrs": [f"{REAL_NODE_IP}/32"], "ports": [layout.ports["apiserver"]]}
        },
        "gateway": {
            "replicaCount": 1,
            "modelProxy": {
                "enabled": True,
                "upstreamUrl": model.base_url,
                "apiKeySecret": {"name": MODEL_KEY_SECRET},
                "upstreamEgress": {
                    "to": [{"ipBlock": {"cidr": f"{node.OUTSIDE_IP}/32"}}],
                    "ports": [MODEL_PORT],
                },
            },
        },
        "config": {"nodeSelector": real_node},
    }


def model_key_secret(model: ModelChoice) -> dict[str, Any]:
    """The Secret (operator namespace) the gateway's model proxy reads the key from: the
    only place the key lives; no session namespace holds it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": MODEL_KEY_SECRET, "namespace": OPERATOR_NAMESPACE},
        "stringData": {runtime.ENV_API_KEY: model.api_key},
    }


def helm(layout: Layout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ensure_built(["helm"])
    home = layout.root / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(layout.kubeconfig(pki.ADMIN)),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    done = subprocess.run(
        [str(binary_path("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if check and done.returncode != 0:
        raise InstallError(f"helm {args[0]} failed:\n{done.stdout}{done.stderr}".strip())
    return done


def install_chart(layout: Layout, values: dict[str, Any], model: ModelChoice) -> None:
    """`helm upgrade --install` of helm/corral, waiting until its pods are Ready."""
    apply(layout, [namespace(OPERATOR_NAMESPACE)])
    apply(layout, [model_key_secret(model)], OPERATOR_NAMESPACE)
    values_file = layout.root / "corral-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm(
        layout,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        OPERATOR_NAMESPACE,
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        "10m",
    )


def uninstall_chart(layout: Layout) -> bool:
    done = helm(layout, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)
    return done.returncode == 0


def wait(what: str, check: Any, timeout: float, hint: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise InstallError(f"{what} did not happen in {timeout:.0f}s{': ' + hint if hint else ''}")


def default_storage_class(layout: Layout) -> str | None:
    """The default StorageClass's name: Hybrid volumes claimed before it exists would never
    bind (and the scheduler would warn about unbound claims)."""
    out = kubectl(layout, "get", "storageclass", "-o", "json", check=False)
    for item in json.loads(out or "{}").get("items") or []:
        notes = item["metadata"].get("annotations") or {}
        if notes.get("storageclass.kubernetes.io/is-default-class") == "true":
            return str(item["metadata"]["name"])
    return None


def operator_leading(layout: Layout) -> bool:
    """The operator's Lease has a holder whose pod is Ready (sessions get reconciled)."""
    holder = kubectl(
        layout,
        "-n",
        OPERATOR_NAMESPACE,
        "get",
        "lease",
        RELEASE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
        check=False,
    ).strip()
    if not holder:
        return False
    ready = kubectl(
        layout,
        "-n",
        OPERATOR_NAMESPACE,
        "get",
        "pod",
        holder,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )
    return ready.strip() == "True"


def user_kubeconfig(layout: Layout) -> Path:
    """A kubeconfig with a bearer token (the gateway checks tokens, not client certificates)
    for a ServiceAccount bound cluster-wide to the chart's corral-session-user role (so
    `corral ls -A` works too) and allowed to read pods and their logs in `demo`."""
    apply(
        layout,
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": DEMO_USER, "namespace": DEMO_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": DEMO_USER},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": SESSION_USER_ROLE,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": DEMO_USER, "namespace": DEMO_NAMESPACE}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"{DEMO_USER}-logs", "namespace": DEMO_NAMESPACE},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{DEMO_USER}-logs", "namespace": DEMO_NAMESPACE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": f"{DEMO_USER}-logs",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": DEMO_USER, "namespace": DEMO_NAMESPACE}
                ],
            },
        ],
    )
    token = kubectl(
        layout, "-n", DEMO_NAMESPACE, "create", "token", DEMO_USER, "--duration=168h"
    ).strip()
    import base64

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "corral",
                "cluster": {
                    "server": layout.apiserver_url,
                    "certificate-authority-data": base64.b64encode(
                        layout.certs.ca_cert.read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": DEMO_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "corral-demo",
                "context": {"cluster": "corral", "user": DEMO_USER, "namespace": DEMO_NAMESPACE},
            }
        ],
        "current-context": "corral-demo",
    }
    path = layout.root / "user.kubeconfig"
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


def warning_events(layout: Layout, since: str | None = None) -> list[str]:
    """`namespace kind/name reason: message` of every Warning Event (after `since`, an
    RFC 3339 time), in every namespace."""
    out = kubectl(layout, "get", "events", "-A", "--field-selector=type=Warning", "-o", "json")
    lines = []
    for event in json.loads(out).get("items") or []:
        when = event.get("lastTimestamp") or event.get("eventTime") or ""
        if since and when and when < since:
            continue
        regarding = event.get("involvedObject") or {}
        lines.append(
            f"{event['metadata']['namespace']} {regarding.get('kind')}/{regarding.get('name')} "
            f"{event.get('reason')}: {(event.get('message') or '')[:200]}"
        )
    return lines


def not_corrals(line: str) -> str | None:
    """Who a Warning Event of a start is about when it is not Corral (None: it may be).
    Each kind was seen on these 2-core machines and is posted whatever Corral does."""
    if " Node/" in line and " CgroupV1:" in line:
        # The kubelet's notice that this host runs cgroup v1 (the real node needs v1
        # here), posted at every node start.
        return "this machine"
    if " FailedMount: " in line and "cache: timed out waiting" in line:
        # The kubelet may not read a new pod's secrets and config maps until the API
        # server's node authorizer has seen the pod bound to it ("no relationship found
        # between node and this object"); on a loaded host the first read misses the
        # kubelet's 1-second deadline, and the mount, retried half a second later, works.
        return "the kubelet's first mount, retried"
    if " FailedScheduling: " in line and "could not find v1.PersistentVolumeClaim" in line:
        # kube-scheduler racing itself on a new claim: VolumeBinding's PreFilter found it in
        # the claim lister, then missed it in the assume cache that the same informer's
        # event handler fills a moment later; the pod is retried and scheduled. Waiting
        # longer before creating the pod would not help: the lister already had it. A
        # claim really missing reads 'persistentvolumeclaim "..." not found' instead.
        return "the scheduler's volume cache, retried"
    if " FailedToCreateEndpoint: " in line and "already exists" in line:
        # kube-controller-manager's endpoints controller racing its own earlier write.
        return "the control plane"
    if " ClusterIPNotAllocated: " in line:
        # kube-apiserver's ClusterIP repair loop, which compares a snapshot of the
        # allocated IPs with a list of Services read at another moment: a Service created
        # between the two reads is "not allocated; repairing" (upstream's discussion:
        # kubernetes/kubernetes PR 93199).
        return "the control plane"
    return None
