"""The operator's identity exactly as the Helm chart makes it, for operators run by tests.

The chart's ServiceAccount, (Cluster)Roles, bindings and leader-election Lease are rendered
by the project's `helm template` and applied into a namespace; a bound token of that
ServiceAccount (TokenRequest API) goes into a kubeconfig for the operator process. An
operator run this way can do exactly what an installed one may: a verb the chart lacks
fails the test that needs it, instead of passing under cluster-admin.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[3] / "helm" / "corral"
# What the operator's identity is made of; nothing else of the chart is applied.
IDENTITY_TEMPLATES = (
    "templates/serviceaccount.yaml",
    "templates/rbac.yaml",
    "templates/lease.yaml",
)
# The gateway's identity: its ServiceAccount and RBAC (the rest of these templates, the
# Deployment and Service, is left out).
GATEWAY_TEMPLATES = ("templates/gateway.yaml", "templates/gateway-rbac.yaml")
IDENTITY_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
TOKEN_SECONDS = 6 * 3600  # longer than any test run; the API server may shorten it


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def render_identity(
    release: str,
    namespace: str,
    lease_name: str,
    watch_namespaces: Sequence[str] = (),
    chart: Path = CHART,
    templates: Sequence[str] = IDENTITY_TEMPLATES,
    sets: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, RBAC and Lease objects for a release in `namespace`
    (with GATEWAY_TEMPLATES: the gateway's ServiceAccount and RBAC)."""
    from corral.cluster.build import binary_path, ensure_built

    ensure_built(["helm"])
    argv = [str(binary_path("helm")), "template", release, str(chart), "--namespace", namespace]
    argv += ["--set-json", f"leaderElection.leaseName={json.dumps(lease_name)}"]
    argv += ["--set-json", f"watchNamespaces={json.dumps(list(watch_namespaces))}"]
    for item in sets:  # extra values, e.g. gateway.modelProxy.enabled=true
        argv += ["--set", item]
    for template in templates:
        argv += ["--show-only", template]
    docs = [doc for doc in yaml.safe_load_all(_run(argv)) if doc]
    return [d for d in docs if d["kind"] in IDENTITY_KINDS or d["kind"] == "Lease"]


def granted_checks(objects: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """One resource attribute set per (namespace, group, resource, verb) the objects grant."""
    role_namespaces: dict[tuple[str, str], list[str]] = {}
    for binding in objects:
        subjects = binding.get("subjects") or []
        # Only what the ServiceAccount is granted itself (not, say, every authenticated user).
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding") and any(
            s.get("kind") == "ServiceAccount" for s in subjects
        ):
            ref = binding["roleRef"]
            scope = binding["metadata"].get("namespace", "")
            role_namespaces.setdefault((ref["kind"], ref["name"]), []).append(scope)
    checks = []
    for role in objects:
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        key = (role["kind"], role["metadata"]["name"])
        for scope in role_namespaces.get(key, []):
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        plural, _, sub = resource.partition("/")
                        for verb in rule["verbs"]:
                            checks.append(
                                {
                                    "namespace": scope,
                                    "group": group,
                                    "resource": plural,
                                    "subresource": sub,
                                    "verb": verb,
                                    "name": (rule.get("resourceNames") or [""])[0],
                                }
                            )
    return checks


@dataclass
class ChartIdentity:
    """A ServiceAccount with the chart's rights, and a kubeconfig that authenticates as it."""

    admin_kubeconfig: Path
    namespace: str
    service_account: str
    kubeconfig: Path
    objects: list[dict[str, Any]]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def delete(self) -> None:
        """Remove the cluster-scoped objects (the namespaced ones go with their namespace)."""
        from corral.cluster.build import binary_path

        cluster = [o for o in self.objects if o["kind"] in CLUSTER_KINDS]
        if not cluster:
            return
        manifest = yaml.safe_dump_all(cluster)
        kubectl = str(binary_path("kubectl"))
        subprocess.run(
            [kubectl, f"--kubeconfig={self.admin_kubeconfig}", "delete", "--ignore-not-found",
             "--wait=false", "-f", "-"],
            input=manifest, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def _admin_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]


def token_kubeconfig(
    admin_kubeconfig: Path, namespace: str, service_account: str, path: Path
) -> Path:
    """A kubeconfig for `service_account`: the admin kubeconfig's server and CA, a bound
    token (TokenRequest) of the ServiceAccount, and nothing of the admin's credentials."""
    from kubernetes import client

    core = client.CoreV1Api(_admin_client(admin_kubeconfig))
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    minted = core.create_namespaced_service_account_token(service_account, namespace, request)
    status = minted.status
    assert status is not None and status.token, f"no token for {service_account}"
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in admin["contexts"]}
    cluster_name = contexts[admin["current-context"]]["cluster"]
    [cluster] = [c["cluster"] for c in admin["clusters"] if c["name"] == cluster_name]
    server_entry = {
        k: v
        for k, v in cluster.items()
        if k in ("server", "certificate-authority", "certificate-authority-data")
    }
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "corral", "cluster": server_entry}],
        "users": [{"name": service_account, "user": {"token": status.token}}],
        "contexts": [
            {
                "name": service_account,
                "context": {"cluster": "corral", "user": service_account, "namespace": namespace},
            }
        ],
        "current-context": service_account,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig), encoding="utf-8")
    path.chmod(0o600)
    return path


def chart_identity(
    admin_kubeconfig: Path,
    namespace: str,
    lease_name: str,
    workdir: Path,
    release: str = "corral",
    watch_namespaces: Sequence[str] = (),
    templates: Sequence[str] = IDENTITY_TEMPLATES,
    sets: Sequence[str] = (),
) -> ChartIdentity:
    """Apply the chart's identity objects for `release` in `namespace` (which must exist)
    and mint a kubeconfig for its ServiceAccount.

    With no `watch_namespaces` the chart renders its cluster-wide ClusterRole; with names, a
    Role in each (those namespaces must exist too). Call `delete()` when done: the
    ClusterRole and ClusterRoleBinding outlive the namespace. Their names carry the
    namespace (the chart's `<namespace>-<fullname>`), so runs on one cluster do not collide.
    """
    from corral.cluster.build import binary_path

    objects = render_identity(
        release, namespace, lease_name, watch_namespaces, templates=templates, sets=sets
    )
    [account] = [o for o in objects if o["kind"] == "ServiceAccount"]
    identity = ChartIdentity(
        admin_kubeconfig=admin_kubeconfig,
        namespace=namespace,
        service_account=account["metadata"]["name"],
        kubeconfig=workdir / f"{namespace}-{release}.kubeconfig",
        objects=objects,
    )
    _run(
        [str(binary_path("kubectl")), f"--kubeconfig={admin_kubeconfig}", "apply",
         "--server-side", "--force-conflicts", "--field-manager=corral-tests", "-f", "-"],
        stdin=yaml.safe_dump_all(objects),
    )  # fmt: skip
    wait_granted(admin_kubeconfig, identity.username, granted_checks(objects))
    token_kubeconfig(admin_kubeconfig, namespace, identity.service_account, identity.kubeconfig)
    return identity


def wait_granted(
    admin_kubeconfig: Path, username: str, checks: Sequence[dict[str, str]], timeout: float = 60
) -> None:
    """Wait until the API server's authorizer has taken in the new bindings (its RBAC cache
    follows a watch), so the operator's first requests are not refused for a moment."""
    from kubernetes import client

    from corral.testing.kube import wait_for

    api = client.AuthorizationV1Api(_admin_client(admin_kubeconfig))

    def allowed(check: dict[str, str]) -> bool:
        attributes = client.V1ResourceAttributes(**{k: v for k, v in check.items() if v})
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(user=username, resource_attributes=attributes)
        )
        status = api.create_subject_access_review(review).status
        return status is not None and bool(status.allowed)

    for check in checks:
        wait_for(partial(allowed, check), timeout=timeout, what=f"{username} granted {check}")


# The authorizer's refusal: `User "system:serviceaccount:…" cannot patch resource "…"`.
RBAC_DENIAL = re.compile(r"cannot [a-z]+ resource")


def refused_requests(log_path: Path) -> list[str]:
    """Lines of an operator log about requests RBAC refused (not admission's 403s, e.g.
    Pod Security, nor those into a namespace being deleted)."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    return [line for line in lines if RBAC_DENIAL.search(line)]
