"""The Helm chart against the real API server: lint, server-side dry run, install, RBAC,
upgrade and uninstall, with the operator running as the chart's own ServiceAccount.

No image can be pulled here and KWOK pods run no code, so the chart's Deployment lands
as fake pods on KWOK nodes while the operator itself runs as a local subprocess that
authenticates with a token of the chart's ServiceAccount (TokenRequest API) and reads the
chart's ConfigMap and Deployment flags. Its sessions live in a namespace outside the
`t<run>-*` pattern of the run's shared operator, so only the ServiceAccount's operator acts
there.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.api import runtime
from corral.cluster.control_plane import FAKE_NODES
from corral.config import OperatorConfig
from corral.testing.kube import wait_for
from corral.testing.operator import KWOK_TOLERATION, OperatorProcess, report_activity

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "corral"
EXAMPLES = REPO / "examples"
RUN = uuid.uuid4().hex[:5]
# Outside the run operator's `t<id>-*` pattern: only the ServiceAccount's operator acts here.
RELEASE = f"corral-{RUN}"
RELEASE_NAMESPACE = f"h{RUN}-corral"
SESSIONS_NAMESPACE = f"h{RUN}-sessions"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
POD_SECURITY = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}
# Installed values: sessions in one namespace (Roles there), KWOK tolerations for the
# operator's own (fake) pods and for the session pods it creates.
BASE_VALUES: dict[str, Any] = {
    "watchNamespaces": [SESSIONS_NAMESPACE],
    "tolerations": [KWOK_TOLERATION],
    "config": {"tolerations": [KWOK_TOLERATION]},
}
# Every kind the chart renders (monitoring CRs aside: their CRDs are not installed here).
CLUSTER_KINDS = (
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "validatingadmissionpolicies.admissionregistration.k8s.io",
    "validatingadmissionpolicybindings.admissionregistration.k8s.io",
)
CHART_KINDS = (
    "deployments.apps",
    "daemonsets.apps",
    "services",
    "configmaps",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "networkpolicies.networking.k8s.io",
    "poddisruptionbudgets.policy",
    "leases.coordination.k8s.io",
    "secrets",
    *CLUSTER_KINDS,
)
# What the Deployments and the DaemonSet make, labelled like them.
RUNTIME_KINDS = ("replicasets.apps", "controllerrevisions.apps", "pods")
FORBIDDEN = re.compile(r"\b403\b|Forbidden|forbidden|Not enough permissions")


@dataclass
class Tools:
    helm_binary: str
    kubectl_binary: str
    kubeconfig: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.helm_binary, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.kubectl_binary, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def values_file(self, name: str, values: dict[str, Any]) -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def tools(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    from corral.cluster.build import binary_path, ensure_built

    ensure_built(["helm"])
    workdir = tmp_path_factory.mktemp("helm")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        # Keep Helm's repository cache and config out of the user's home.
        "HELM_CACHE_HOME": str(workdir / "cache"),
        "HELM_CONFIG_HOME": str(workdir / "config"),
        "HELM_DATA_HOME": str(workdir / "data"),
    }
    return Tools(str(binary_path("helm")), str(binary_path("kubectl")), kubeconfig, workdir, env)


@pytest.fixture(scope="module")
def namespaces(tools: Tools, crd: None) -> Iterator[tuple[str, str]]:
    for name in (RELEASE_NAMESPACE, SESSIONS_NAMESPACE):
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": POD_SECURITY},
        }
        tools.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    yield RELEASE_NAMESPACE, SESSIONS_NAMESPACE
    tools.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", check=False)
    tools.kubectl(
        "delete", ",".join(CLUSTER_KINDS), "-l", INSTANCE, "--ignore-not-found", check=False
    )
    for name in (RELEASE_NAMESPACE, SESSIONS_NAMESPACE):
        tools.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
        )


@dataclass
class Release:
    tools: Tools
    values: Path
    installed: bool = True

    def manifest_objects(self) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every object in the release's current manifest."""
        text = self.tools.helm("get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE).stdout
        found = set()
        for doc in yaml.safe_load_all(text):
            if doc:
                meta = doc["metadata"]
                found.add((doc["kind"], meta.get("namespace", ""), meta["name"]))
        return found

    def live_objects(self, kinds: tuple[str, ...] = CHART_KINDS) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every live object carrying the release's label."""
        body = self.tools.get_json(",".join(kinds), "-A", "-l", INSTANCE)
        return {
            (item["kind"], item["metadata"].get("namespace", ""), item["metadata"]["name"])
            for item in body["items"]
        }


@pytest.fixture(scope="module")
def release(tools: Tools, namespaces: tuple[str, str]) -> Release:
    values = tools.values_file("base", BASE_VALUES)
    tools.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "-f",
        str(values),
        "--wait",
        "--timeout",
        "180s",
    )
    return Release(tools, values)


def service_account_kubeconfig(tools: Tools, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, with a bound token."""
    token = tools.kubectl(
        "create", "token", RELEASE, "-n", RELEASE_NAMESPACE, "--duration=2h"
    ).stdout.strip()
    admin = json.loads(
        tools.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "corral",
                "cluster": {
                    "server": cluster["server"],
                    "certificate-authority-data": cluster["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": RELEASE, "user": {"token": token}}],
        "contexts": [
            {
                "name": RELEASE,
                "context": {
                    "cluster": "corral",
                    "user": RELEASE,
                    "namespace": RELEASE_NAMESPACE,
                },
            }
        ],
        "current-context": RELEASE,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass
class ChartOperator:
    """The operator as the chart configures it, run locally as the chart's ServiceAccount."""

    tools: Tools
    kubeconfig: Path | None = None
    process: OperatorProcess | None = None

    def start(self) -> OperatorProcess:
        from corral.cli import build_parser

        self.kubeconfig = service_account_kubeconfig(self.tools, self.tools.workdir / "sa.yaml")
        config_map = self.tools.get_json("configmap", RELEASE, "-n", RELEASE_NAMESPACE)
        config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
        # The chart mounts its activity key Secret at config.activityKeyFile; here, a local copy.
        key_secret = self.tools.get_json(
            "secret", f"{RELEASE}-activity-key", "-n", RELEASE_NAMESPACE
        )
        key_file = self.tools.workdir / "activity-key"
        key_file.write_bytes(base64.b64decode(key_secret["data"]["key"]))
        config = config.model_copy(update={"activity_key_file": str(key_file)})
        deployment = self.tools.get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        args = build_parser(["operator"]).parse_args(container["args"])
        assert args.lease_namespace == config.namespace == RELEASE_NAMESPACE
        self.process = OperatorProcess(
            kubeconfig=self.kubeconfig,
            config=config,
            workdir=self.tools.workdir,
            namespaces=args.namespace,
            lease_name=args.lease_name,
            lease_seconds=args.lease_seconds,
            renew_seconds=args.renew_seconds,
            identity=f"helm-{RUN}",
        ).start()
        self.process.wait_leader(timeout=60)
        return self.process

    def log(self) -> str:
        assert self.process is not None
        return self.process.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="module")
def chart_operator(tools: Tools, release: Release) -> Iterator[ChartOperator]:
    operator = ChartOperator(tools)
    yield operator
    operator.stop()


def session(tools: Tools, name: str) -> dict[str, Any]:
    body: dict[str, Any] = tools.get_json("agentsession", name, "-n", SESSIONS_NAMESPACE)
    return body


def phase_is(tools: Tools, name: str, phase: str) -> dict[str, Any] | None:
    body = session(tools, name)
    return body if body.get("status", {}).get("phase") == phase else None


# --- lint and dry run --------------------------------------------------------------------

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"], "replicaCount": 3},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "runnerPodMonitor": {"enabled": True, "scraper": {"namespace": "monitoring"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1/32"]}},
    },
    "minimal": {
        "replicaCount": 1,
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "activityReporting": {"enabled": False},
        "securityContext": {"runAsUser": None, "runAsGroup": None},
    },
}


@pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))
def test_chart_lints_clean(tools: Tools, values: dict[str, Any]) -> None:
    path = tools.values_file("lint", values)
    done = tools.helm("lint", "--strict", str(CHART), "-f", str(path))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


NOTES_CASES = {k: v for k, v in VALUE_SETS.items() if k != "monitoring"}


@pytest.mark.parametrize(
    "values",
    [*NOTES_CASES.values(), {"watchNamespaces": None}],
    ids=[*NOTES_CASES, "null-namespaces"],
)
def test_install_notes_render(tools: Tools, values: dict[str, Any]) -> None:
    """NOTES.txt is rendered by install/upgrade only (not by lint or template). A client
    dry run still maps every kind, so the monitoring kinds (no CRDs here) stay out."""
    path = tools.values_file("notes", values)
    done = tools.helm(
        "install", f"notes-{RUN}", str(CHART), "-n", "default", "--dry-run=client", "-f", str(path)
    )
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "is installed as release" in notes
    assert "create secret generic anthropic-api-key" in notes
    assert "label secret anthropic-api-key corral.dev/credentials=true" in notes


@pytest.mark.parametrize("name", ["defaults", "watch-namespaces", "minimal"])
def test_rendered_chart_passes_server_side_dry_run(
    tools: Tools, namespaces: tuple[str, str], name: str
) -> None:
    values = dict(VALUE_SETS[name])
    if "watchNamespaces" in values:
        values["watchNamespaces"] = [SESSIONS_NAMESPACE]
    path = tools.values_file(f"dry-{name}", values)
    rendered = tools.helm(
        "template",
        f"dry-{RUN}",
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "--include-crds",
        "-f",
        str(path),
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    done = tools.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "--field-manager=corral-helm-test",
        "-f",
        "-",
        stdin=rendered,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len([d for d in yaml.safe_load_all(rendered) if d])
    assert all(line.endswith("(server dry run)") for line in lines), done.stdout
    # The namespace warns on Pod Security `restricted`: the operator's pod template complies.
    assert "Warning" not in done.stderr, done.stderr


def test_monitoring_objects_need_the_prometheus_operator_crds(tools: Tools) -> None:
    """ServiceMonitor/PrometheusRule are opt-in: without their CRDs the API rejects them."""
    path = tools.values_file("monitoring", VALUE_SETS["monitoring"])
    rendered = tools.helm(
        "template",
        f"dry-{RUN}",
        str(CHART),
        "-n",
        "default",
        "-f",
        str(path),
        "--show-only",
        "templates/servicemonitor.yaml",
    ).stdout
    done = tools.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered, check=False)
    if done.returncode == 0:  # a cluster with the Prometheus Operator: accepted
        assert "servicemonitor" in done.stdout
    else:
        assert 'no matches for kind "ServiceMonitor"' in done.stderr, done.stderr


# --- install, and the operator as the chart's ServiceAccount -----------------------------


def test_image_prepuller_runs_where_sessions_may(tools: Tools, release: Release) -> None:
    """The pre-puller's pods are admitted under the namespace's enforced Pod Security
    `restricted` and run on each KWOK node, whose taint only the sessions' toleration
    (config.tolerations; the chart's own `tolerations` are the operator's) lets them pass."""
    selector = f"{INSTANCE},app.kubernetes.io/component=image-prepuller"

    def placed() -> set[str] | None:
        status = tools.get_json("daemonsets", "-n", RELEASE_NAMESPACE, "-l", selector)
        [daemon_set] = status["items"]
        counts = daemon_set.get("status") or {}
        pods = tools.get_json("pods", "-n", RELEASE_NAMESPACE, "-l", selector)["items"]
        nodes = {pod["spec"].get("nodeName") for pod in pods}
        desired = counts.get("desiredNumberScheduled")
        if set(FAKE_NODES) <= nodes and counts.get("numberReady") == desired == len(pods):
            return nodes
        return None

    wait_for(placed, timeout=90, what="the pre-puller's pods ready on the KWOK nodes")


def test_operator_runs_as_the_chart_service_account(
    tools: Tools, release: Release, chart_operator: ChartOperator
) -> None:
    deployment = tools.get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)
    assert deployment["status"].get("availableReplicas") == 2  # KWOK's fake pods
    lease = tools.get_json("lease", RELEASE, "-n", RELEASE_NAMESPACE)
    assert not lease["spec"].get("holderIdentity")  # nobody leads before our operator

    # A session and its API-key Secret, from the examples. Nothing acts on them yet.
    tools.kubectl(
        "apply",
        "-n",
        SESSIONS_NAMESPACE,
        "-f",
        str(EXAMPLES / "credentials-secret.yaml"),
        "-f",
        str(EXAMPLES / "long-running.yaml"),
    )
    name = yaml.safe_load((EXAMPLES / "long-running.yaml").read_text())["metadata"]["name"]
    time.sleep(3)
    assert not session(tools, name).get("status", {}).get("phase")
    assert tools.get_json("pods", "-n", SESSIONS_NAMESPACE)["items"] == []

    operator = chart_operator.start()
    who = json.loads(
        tools.kubectl("auth", "whoami", "-o", "json", kubeconfig=chart_operator.kubeconfig).stdout
    )
    assert who["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
    )
    lease = tools.get_json("lease", RELEASE, "-n", RELEASE_NAMESPACE)
    assert lease["spec"]["holderIdentity"] == operator.identity

    body = wait_for(
        lambda: phase_is(tools, name, "Running"),
        timeout=90,
        what=f"{name} Running as the chart's ServiceAccount",
    )
    # Running needs the credentials check first: the Secret `get` works.
    pod = tools.get_json("pod", body["status"]["podName"], "-n", SESSIONS_NAMESPACE)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    [key] = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == runtime.ENV_API_KEY]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "anthropic-api-key"
    assert env[runtime.ENV_ACTIVITY_URL] == (
        f"http://{RELEASE}.{RELEASE_NAMESPACE}.svc:8081/v1/activity"
    )
    # The pod's activity token, signed with the chart's key, is what the operator accepts.
    token = env[runtime.ENV_ACTIVITY_TOKEN]
    accepted = report_activity(
        operator.url, SESSIONS_NAMESPACE, name, body["status"]["podName"], False, token
    )
    assert accepted == 202
    assert pod["spec"]["tolerations"][0]["key"] == KWOK_TOLERATION["key"]
    policy = tools.get_json("networkpolicy", name, "-n", SESSIONS_NAMESPACE)
    to_operator = [
        rule
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if peer.get("namespaceSelector", {})
        .get("matchLabels", {})
        .get("kubernetes.io/metadata.name")
        == RELEASE_NAMESPACE
    ]
    assert to_operator and to_operator[0]["ports"] == [{"port": 8081, "protocol": "TCP"}]
    assert tools.get_json("service", name, "-n", SESSIONS_NAMESPACE)

    # Suspend and resume: the operator deletes the pod, then creates a new one.
    tools.kubectl(
        "patch",
        "agentsession",
        name,
        "-n",
        SESSIONS_NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": true}}',
    )
    wait_for(lambda: phase_is(tools, name, "Suspended"), timeout=60, what=f"{name} Suspended")
    tools.kubectl(
        "patch",
        "agentsession",
        name,
        "-n",
        SESSIONS_NAMESPACE,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false}}',
    )
    wait_for(lambda: phase_is(tools, name, "Running"), timeout=60, what=f"{name} Running again")

    assert operator.metric("corral_reconcile_duration_seconds_count") > 0
    denied = [line for line in chart_operator.log().splitlines() if FORBIDDEN.search(line)]
    assert denied == [], "\n".join(denied[:10])


# --- RBAC: exactly what the operator uses ------------------------------------------------

Row = tuple[str, str, str, str]


def can_i_list(tools: Tools, namespace: str, user: str) -> set[Row]:
    """`kubectl auth can-i --list` as rows (resource, non-resource URLs, names, verbs)."""
    text = tools.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    header, *lines = text.splitlines()
    starts = [header.index(title) for title in ("Non-Resource URLs", "Resource Names", "Verbs")]
    rows = set()
    for line in lines:
        cells = [
            line[: starts[0]],
            line[starts[0] : starts[1]],
            line[starts[1] : starts[2]],
            line[starts[2] :],
        ]
        resource, urls, names, verbs = (c.strip() for c in cells)
        verbs = "[" + " ".join(sorted(verbs.strip("[]").split())) + "]"
        rows.add((resource, urls, names, verbs))
    return rows


def service_account(name: str) -> str:
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{name}"


SESSION_ROWS: set[Row] = {
    ("agentsessions.corral.dev", "[]", "[]", "[delete list watch]"),
    ("agentsessions.corral.dev/status", "[]", "[]", "[patch]"),
    ("agentsessions.corral.dev/finalizers", "[]", "[]", "[update]"),
    # get: a pod the status names but the watch has not shown is looked up, not replaced.
    ("pods", "[]", "[]", "[create delete get list patch watch]"),
    # The start-up CPU boost ends by an in-place resize (render.cpu_boost).
    ("pods/resize", "[]", "[]", "[patch]"),
    ("services", "[]", "[]", "[create delete get list patch watch]"),
    ("persistentvolumeclaims", "[]", "[]", "[create get list watch]"),
    ("networkpolicies.networking.k8s.io", "[]", "[]", "[create delete get list patch watch]"),
    ("secrets", "[]", "[]", "[get]"),
    ("events", "[]", "[]", "[create]"),
}
CRD_ROW: Row = ("customresourcedefinitions.apiextensions.k8s.io", "[]", "[]", "[list watch]")
NAMESPACES_ROW: Row = ("namespaces", "[]", "[]", "[list watch]")
LEASE_ROW: Row = ("leases.coordination.k8s.io", "[]", f"[{RELEASE}]", "[get patch]")
# The leader labels its own pod (the operator Service selects corral.dev/leader=true): a
# merge patch, never a read.
OWN_PODS_ROW: Row = ("pods", "[]", "[]", "[patch]")


def granted(tools: Tools, namespace: str) -> set[Row]:
    """What the chart grants: the ServiceAccount's rows minus those of any ServiceAccount."""
    baseline = can_i_list(tools, namespace, service_account(f"nobody-{RUN}"))
    assert {row[0] for row in baseline if row[0]} <= {
        "selfsubjectreviews.authentication.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        # Every authenticated user may reach the gateway Service through the API server's
        # service proxy (and nothing else of the release's namespace).
        *(["services/proxy"] if namespace == RELEASE_NAMESPACE else []),
    }
    if namespace == RELEASE_NAMESPACE:
        proxies = {row for row in baseline if row[0] == "services/proxy"}
        assert proxies == {
            ("services/proxy", "[]", f"[{RELEASE}-gateway]", "[create get]"),
            ("services/proxy", "[]", f"[{RELEASE}-gateway:http]", "[create get]"),
        }, proxies
    return can_i_list(tools, namespace, service_account(RELEASE)) - baseline


def can_i(tools: Tools, *args: str) -> bool:
    done = tools.kubectl("auth", "can-i", *args, f"--as={service_account(RELEASE)}", check=False)
    return done.stdout.strip() == "yes"


def test_service_account_can_do_exactly_what_the_operator_needs(
    tools: Tools, release: Release
) -> None:
    listing = tools.kubectl(
        "auth", "can-i", "--list", f"--as={service_account(RELEASE)}", "-n", SESSIONS_NAMESPACE
    ).stdout
    print(f"kubectl auth can-i --list -n {SESSIONS_NAMESPACE}:\n{listing}")
    cluster_reads = {CRD_ROW, NAMESPACES_ROW}
    assert granted(tools, SESSIONS_NAMESPACE) == SESSION_ROWS | cluster_reads
    assert granted(tools, RELEASE_NAMESPACE) == {LEASE_ROW, OWN_PODS_ROW} | cluster_reads
    assert granted(tools, "default") == cluster_reads

    sessions, home = f"-n={SESSIONS_NAMESPACE}", f"-n={RELEASE_NAMESPACE}"
    assert can_i(tools, "create", "pods", sessions)
    assert can_i(tools, "get", "secrets/anthropic-api-key", sessions)
    assert can_i(tools, "patch", f"leases/{RELEASE}", home)
    # Not: secrets beyond a get in its namespaces, exec, spec writes, other leases, namespaces.
    assert not can_i(tools, "list", "secrets", sessions)
    assert not can_i(tools, "watch", "secrets", sessions)
    assert not can_i(tools, "get", "secrets", "-n=kube-system")
    assert not can_i(tools, "get", "secrets", home)
    assert can_i(tools, "patch", "networkpolicies", sessions)
    assert not can_i(tools, "get", "pods", home)
    assert not can_i(tools, "list", "pods", home)
    assert not can_i(tools, "create", "pods", "--subresource=exec", sessions)
    assert not can_i(tools, "get", "pods", "--subresource=log", sessions)
    assert not can_i(tools, "create", "pods", "-n=default")
    assert not can_i(tools, "update", "agentsessions.corral.dev", sessions)
    assert not can_i(tools, "patch", "agentsessions.corral.dev", sessions)
    assert not can_i(tools, "create", "leases", home)
    assert not can_i(tools, "get", "leases/another", home)
    assert not can_i(tools, "patch", "leases/kube-controller-manager", "-n=kube-system")
    assert not can_i(tools, "delete", "namespaces")
    assert not can_i(tools, "create", "clusterrolebindings")
    assert not can_i(tools, "update", "customresourcedefinitions")
    assert not can_i(tools, "impersonate", "serviceaccounts", sessions)


# --- upgrade and uninstall ---------------------------------------------------------------


def test_upgrade_with_changed_values_leaves_no_orphans(
    tools: Tools, release: Release, chart_operator: ChartOperator
) -> None:
    before = release.live_objects()
    assert before == release.manifest_objects()
    old_checksum = tools.get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)["spec"][
        "template"
    ]["metadata"]["annotations"]["checksum/config"]

    # Every namespace (a ClusterRole instead of the Roles), 3 replicas, no NetworkPolicy
    # or PDB, a dashboard, another default model.
    changed = {
        **BASE_VALUES,
        "watchNamespaces": [],
        "replicaCount": 3,
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "gateway": {"podDisruptionBudget": {"enabled": False}},
        "metrics": {"grafanaDashboard": {"enabled": True}},
        "config": {**BASE_VALUES["config"], "defaultModel": "claude-opus-4-1"},
    }
    tools.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "--reset-values",
        "-f",
        str(tools.values_file("changed", changed)),
        "--wait",
        "--timeout",
        "180s",
    )
    desired = release.manifest_objects()
    assert release.live_objects() == desired
    kinds = {kind for kind, _, _ in desired}
    assert "NetworkPolicy" not in kinds and "PodDisruptionBudget" not in kinds
    assert not any(ns == SESSIONS_NAMESPACE for _, ns, _ in desired)
    assert ("ConfigMap", RELEASE_NAMESPACE, f"{RELEASE}-dashboard") in desired
    deployment = tools.get_json("deployment", RELEASE, "-n", RELEASE_NAMESPACE)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != (
        old_checksum
    )
    config_map = tools.get_json("configmap", RELEASE, "-n", RELEASE_NAMESPACE)
    assert "defaultModel: claude-opus-4-1" in config_map["data"]["config.yaml"]
    # The operator kept its Lease through the upgrade: Helm never touches its fields.
    lease = tools.get_json("lease", RELEASE, "-n", RELEASE_NAMESPACE)
    if chart_operator.process is not None:
        assert lease["spec"]["holderIdentity"] == chart_operator.process.identity
    # Cluster-wide now: the session rules hold in any namespace, the namespaces read is gone.
    assert granted(tools, "default") == SESSION_ROWS | {CRD_ROW}

    # And back: the Roles return, the dashboard goes, nothing is left over.
    tools.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "--reset-values",
        "-f",
        str(release.values),
        "--wait",
        "--timeout",
        "180s",
    )
    wait_for(
        lambda: release.live_objects() == before,
        timeout=60,
        what="the release's objects to be those of the first install",
    )
    assert granted(tools, SESSIONS_NAMESPACE) == SESSION_ROWS | {CRD_ROW, NAMESPACES_ROW}
    if chart_operator.process is not None:
        # RBAC moved twice under the running operator, and it was never refused.
        denied = [line for line in chart_operator.log().splitlines() if FORBIDDEN.search(line)]
        assert denied == [], "\n".join(denied[:10])
        sessions = tools.get_json("agentsessions", "-n", SESSIONS_NAMESPACE)["items"]
        assert [s["status"]["phase"] for s in sessions] == ["Running"]


def test_uninstall_leaves_nothing_of_the_chart(
    tools: Tools, release: Release, chart_operator: ChartOperator
) -> None:
    sessions_before = tools.get_json("agentsessions", "-n", SESSIONS_NAMESPACE)["items"]
    chart_operator.stop()
    tools.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "120s")
    release.installed = False

    wait_for(
        lambda: release.live_objects(CHART_KINDS + RUNTIME_KINDS) == set(),
        timeout=60,
        what="no object (pods included) with the release's label",
    )
    helm_records = tools.get_json(
        "secrets", "-n", RELEASE_NAMESPACE, "-l", f"owner=helm,name={RELEASE}"
    )
    assert helm_records["items"] == []
    # Helm never deletes crds/: the CRD stays, and with it every AgentSession and the
    # children they own (nobody reconciles them until an operator runs again).
    assert tools.get_json("crd", "agentsessions.corral.dev")["metadata"]["name"]
    sessions_after = tools.get_json("agentsessions", "-n", SESSIONS_NAMESPACE)["items"]
    assert [s["metadata"]["uid"] for s in sessions_after] == [
        s["metadata"]["uid"] for s in sessions_before
    ]
    for body in sessions_after:
        pod = body.get("status", {}).get("podName")
        if pod:
            assert tools.get_json("pod", pod, "-n", SESSIONS_NAMESPACE)["metadata"]["name"]
