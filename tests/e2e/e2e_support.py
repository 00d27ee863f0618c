"""Helpers of the e2e tests: sessions, pods on the real node, kubectl, the runner's API."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.api import runtime
from corral.cluster import netns, node, pki
from corral.cluster.build import binary_path
from corral.cluster.layout import Layout
from corral.testing.kube import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "corral"
GROUP, VERSION, PLURAL = "corral.dev", "v1alpha1", "agentsessions"
SESSION_LABEL = "corral.dev/session"
FAKE_API_PORT = 8089
# What every session here may reach besides DNS: the fake Anthropic API, and nothing else.
FAKE_API_EGRESS = {
    "cidr": f"{node.OUTSIDE_IP}/32",
    "ports": [{"port": FAKE_API_PORT, "protocol": "TCP"}],
}
# The real key, as the admin gives it to the gateway's model proxy (a Secret in the
# operator's namespace): the fake model refuses any other, so every turn proves it arrived.
MODEL_KEY = "sk-ant-fake-e2e-real-key"
MODEL_KEY_SECRET = "anthropic-api-key"
# A model the gateway's price table makes dear (the SDK prices it as usual, cheaply): a
# session over its budget is then refused by the gateway, not first stopped by the SDK.
DEAR_MODEL = "claude-e2e-dear"
SMALL = {"cpu": "250m", "memory": "768Mi", "disk": "1Gi"}
# The chart's config.durableWakeLeadSeconds here: a wake on this node takes seconds, and a
# test of it waits for twice this and more (tests/e2e/test_durable_wake.py).
DURABLE_WAKE_LEAD_SECONDS = 30
# The test's DNS for the gateway's egress proxy (chart value gateway.egressProxy.staticHosts):
# names of servers the egress tests make in the outside namespace.
EGRESS_NAMES = {
    "allowed.test": [node.OUTSIDE_IP],
    "refused.test": [node.OUTSIDE_IP],
    "rebind.test": [node.PRIVATE_DECOY_IP],
}


def spec(pattern: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pattern": pattern,
        "allowedTools": ["Bash"],
        "permissionMode": "bypassPermissions",
        "resources": dict(SMALL),
        "network": {"egress": [FAKE_API_EGRESS]},
    }
    body.update(fields)
    return body


@dataclass
class Sessions:
    custom: client.CustomObjectsApi
    namespace: str

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentSession",
            "metadata": {"name": name},
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

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def wake(self, name: str, value: str) -> None:
        body = {"metadata": {"annotations": {runtime.WAKE_ANNOTATION: value}}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, body
        )

    def wait_phase(
        self, name: str, phases: str | tuple[str, ...], timeout: float = 180
    ) -> dict[str, Any]:
        wanted = (phases,) if isinstance(phases, str) else phases

        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in wanted else None

        try:
            return wait_for(reached, timeout=timeout, interval=1, what=f"{name} in {wanted}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; status: {json.dumps(self.status(name))}") from None


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def session_pods(core: client.CoreV1Api, namespace: str, session: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{SESSION_LABEL}={session}")
    return [p for p in pods.items if not p.metadata.deletion_timestamp]


def ready_pod(core: client.CoreV1Api, namespace: str, session: str, timeout: float = 180) -> Any:
    """The session's one pod once it is Running and Ready."""

    def ready() -> Any:
        for pod in session_pods(core, namespace, session):
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            if pod.status.phase == "Running" and conditions.get("Ready") == "True":
                return pod
        return None

    return wait_for(ready, timeout=timeout, interval=1, what=f"a ready pod of {session}")


def node_iptables(node_layout: node.NodeLayout) -> str | None:
    """iptables-save of the node's network namespace (where kube-router writes its rules),
    or None when it failed: it can, while kube-router rewrites the tables (a cold run's
    iptables-save exited 2 once), and the caller asks again."""
    with netns.inside(node_layout.node_netns):
        # The child inherits this thread's network namespace.
        done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"iptables-save exited {done.returncode}: {done.stderr.strip()[:500]}")
        return None
    return done.stdout


def wait_policy_enforced(node_layout: node.NodeLayout, pod_ip: str, timeout: float = 30) -> None:
    """Until kube-router has a firewall chain for the pod (it syncs after pod events)."""
    wait_for(
        lambda: any(
            "KUBE-POD-FW" in line and pod_ip in line
            for line in (node_iptables(node_layout) or "").split("\n")
        ),
        timeout=timeout,
        interval=0.5,
        what=f"kube-router's firewall rules for pod {pod_ip}",
    )


def kubectl(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [str(binary_path("kubectl")), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


# Run in a pod with python3 (the runner image): connect, read what the server says first.
PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.settimeout(3)
        try:
            data = s.recv(64)
        except TimeoutError:
            data = b""
        print("open", data.decode(errors="replace").strip())
except OSError as error:
    print("closed", type(error).__name__, error)
"""


def probe_from(kubeconfig: Path, namespace: str, pod: str, host: str, port: int) -> str:
    """`open <banner>` or `closed <error>`: a TCP connection made from inside `pod`."""
    done = kubectl(
        kubeconfig, "-n", namespace, "exec", pod, "--", "python3", "-c", PROBE, host, str(port)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def busybox_pod(
    core: client.CoreV1Api, namespace: str, name: str, command: list[str], labels: dict[str, str]
) -> Any:
    """A pod that passes Pod Security `restricted`, from the node's busybox image."""
    image = next(s.ref for s in node.node_images(with_runner=False) if s.name == "busybox")
    security = client.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=65534,
        allow_privilege_escalation=False,
        capabilities=client.V1Capabilities(drop=["ALL"]),
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="Never",
                    command=command,
                    security_context=security,
                )
            ],
            node_selector={node.NODE_LABEL: "true"},
            termination_grace_period_seconds=1,
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    def running() -> Any:
        found = core.read_namespaced_pod(name, namespace)
        return found if found.status.phase == "Running" and found.status.pod_ip else None

    return wait_for(running, timeout=60, interval=0.5, what=f"pod {name} running")


def delete_quietly(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as error:
        if error.status != 404:
            raise


class PodProxy:
    """A runner's port through the API server's pod proxy (and the node's relay): what a
    cluster admin could try. With the gateway on, the runner refuses it (or the session's
    NetworkPolicy does); sessions are reached through `GatewayClient`."""

    def __init__(self, layout: Layout, namespace: str, pod: str) -> None:
        self.context = admin_context(layout)
        self.base = (
            f"{layout.apiserver_url}/api/v1/namespaces/{namespace}/pods/"
            f"{pod}:{runtime.RUNNER_PORT}/proxy"
        )

    def status_of(self, path: str) -> tuple[int, str]:
        """The HTTP status and body of GET path (no exception for 4xx/5xx)."""
        try:
            with urllib.request.urlopen(self.base + path, context=self.context, timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


def admin_context(layout: Layout) -> ssl.SSLContext:
    """TLS to the API server as the cluster admin (client certificate)."""
    certs = layout.certs
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.cert("admin")), str(certs.key(pki.ADMIN.filename)))
    return context


def request_token(core: client.CoreV1Api, namespace: str, account: str) -> str:
    """A short-lived token of a ServiceAccount (TokenRequest), as `kubectl create token`."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    made = core.create_namespaced_service_account_token(account, namespace, request)
    token: str = made.status.token
    return token


def make_user(
    core: client.CoreV1Api,
    rbac: client.RbacAuthorizationV1Api,
    namespace: str,
    account: str,
    role_ref: client.V1RoleRef,
) -> str:
    """A ServiceAccount of `namespace` bound there to role_ref; returns its token."""
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=account),
        role_ref=role_ref,
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
    )
    rbac.create_namespaced_role_binding(namespace, binding)
    return request_token(core, namespace, account)


@dataclass
class Reply:
    """One SSE answer: its status, the events (data lines), the comment lines (`: waking`),
    and when the first event arrived, in seconds after the request was sent."""

    status: int
    events: list[dict[str, Any]]
    comments: list[str]
    first_event_after: float | None
    body: str = ""


@dataclass
class GatewayClient:
    """A session user with nothing but a kubeconfig: the API server's service proxy to the
    chart's gateway Service (`<release>-gateway:http`).

    The API server authenticates the request with the user's own token (Authorization,
    which it consumes) and lets every authenticated user proxy to that Service (the chart's
    Role); the gateway checks the same token, sent again in X-Corral-Token. `as_admin`
    authenticates the API server request with the admin's client certificate instead, so
    that what reaches the gateway can be exactly `token` (or nothing)."""

    layout: Layout
    operator_namespace: str
    token: str | None
    release: str = "corral"
    as_admin: bool = False

    @property
    def base(self) -> str:
        return (
            f"{self.layout.apiserver_url}/api/v1/namespaces/{self.operator_namespace}"
            f"/services/{self.release}-gateway:http/proxy/sessions"
        )

    def url(self, namespace: str, name: str, path: str) -> str:
        return f"{self.base}/{namespace}/{name}{path}"

    def context(self) -> ssl.SSLContext:
        if self.as_admin:
            return admin_context(self.layout)
        return ssl.create_default_context(cafile=str(self.layout.certs.ca_cert))

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.token is not None:
            headers["X-Corral-Token"] = self.token
            if not self.as_admin:
                headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(
        self, method: str, namespace: str, name: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """Status and decoded JSON body (no exception for 4xx/5xx)."""
        headers = self.headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        request = urllib.request.Request(
            self.url(namespace, name, path), data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, context=self.context(), timeout=120) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, raw.decode(errors="replace")

    def get(self, namespace: str, name: str, path: str) -> Any:
        status, body = self.call("GET", namespace, name, path)
        assert status == 200, (path, status, body)
        return body

    def send(self, namespace: str, name: str, text: str, timeout: float = 240) -> Reply:
        """POST /v1/messages and read its SSE stream to the end."""
        headers = {**self.headers(), "content-type": "application/json"}
        request = urllib.request.Request(
            self.url(namespace, name, "/v1/messages"),
            data=json.dumps({"text": text}).encode(),
            method="POST",
            headers=headers,
        )
        events: list[dict[str, Any]] = []
        comments: list[str] = []
        first: float | None = None
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, context=self.context(), timeout=timeout) as r:
                for raw in r:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        if first is None:
                            first = time.monotonic() - started
                        events.append(json.loads(line[5:]))
                    elif line.startswith(":"):
                        comments.append(line)
                return Reply(r.status, events, comments, first)
        except urllib.error.HTTPError as error:
            return Reply(error.code, [], [], None, error.read().decode(errors="replace"))

    async def websocket_turn(self, namespace: str, name: str, text: str) -> list[dict[str, Any]]:
        """One message over GET /v1/stream (WebSocket through the API server's upgrade);
        every JSON frame received until the result."""
        import aiohttp

        frames: list[dict[str, Any]] = []
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as http,
            http.ws_connect(
                self.url(namespace, name, "/v1/stream"),
                headers=self.headers(),
                ssl=self.context(),
            ) as ws,
        ):
            await ws.send_json({"type": "message", "text": text})
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame: dict[str, Any] = json.loads(message.data)
                frames.append(frame)
                if frame.get("type") in ("result", "error"):
                    break
        return frames


@dataclass
class Release:
    """The Helm release of helm/corral this suite installs, and how to look at it."""

    name: str
    namespace: str
    kubeconfig: Path
    workdir: Path
    api_client: client.ApiClient
    values: dict[str, Any] = field(default_factory=dict)
    uninstalled_at: datetime | None = None

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        from corral.cluster.build import ensure_built

        ensure_built(["helm"])
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.workdir / "cache"),
            "HELM_CONFIG_HOME": str(self.workdir / "config"),
            "HELM_DATA_HOME": str(self.workdir / "data"),
        }
        done = subprocess.run(
            [str(binary_path("helm")), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def values_file(self, values: dict[str, Any], name: str = "values") -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def sweep_earlier_runs(self) -> list[str]:
        """Uninstall releases of this name that an interrupted earlier run left in a reused
        cluster: their cluster-scoped objects (ClusterRoles, the CRD's webhooks) would make
        this install fail. Returns the namespaces swept."""
        rbac = client.RbacAuthorizationV1Api(self.api_client)
        stale = set()
        for role in rbac.list_cluster_role().items:
            notes = role.metadata.annotations or {}
            if notes.get("meta.helm.sh/release-name") == self.name:
                owner = notes.get("meta.helm.sh/release-namespace", "")
                if owner and owner != self.namespace:
                    stale.add(owner)
        for namespace in sorted(stale):
            done = self.helm("uninstall", self.name, "-n", namespace, "--wait", check=False)
            if done.returncode != 0:  # its namespace (and release record) went first
                for role in rbac.list_cluster_role().items:
                    notes = role.metadata.annotations or {}
                    if notes.get("meta.helm.sh/release-namespace") == namespace:
                        rbac.delete_cluster_role(role.metadata.name)
                for binding in rbac.list_cluster_role_binding().items:
                    notes = binding.metadata.annotations or {}
                    if notes.get("meta.helm.sh/release-namespace") == namespace:
                        rbac.delete_cluster_role_binding(binding.metadata.name)
        return sorted(stale)

    def install(self, values: dict[str, Any]) -> None:
        self.values = values
        swept = self.sweep_earlier_runs()
        if swept:
            print(f"uninstalled releases an earlier run left: {swept}", file=sys.stderr)
        self.helm(
            "install",
            self.name,
            str(CHART),
            "-n",
            self.namespace,
            "-f",
            str(self.values_file(values)),
            "--wait",
            "--timeout",
            "5m",
        )

    def upgrade(self, values: dict[str, Any]) -> None:
        self.values = values
        self.helm(
            "upgrade",
            self.name,
            str(CHART),
            "-n",
            self.namespace,
            "-f",
            str(self.values_file(values, "upgrade")),
            "--wait",
            "--timeout",
            "5m",
        )

    def uninstall(self) -> None:
        self.uninstalled_at = datetime.now(UTC)
        self.helm("uninstall", self.name, "-n", self.namespace, "--wait")

    def installed(self) -> bool:
        return self.helm("status", self.name, "-n", self.namespace, check=False).returncode == 0

    def pods(self) -> list[Any]:
        core = client.CoreV1Api(self.api_client)
        found = core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        return [p for p in found if not p.metadata.deletion_timestamp]

    def lease(self) -> Any:
        coordination = client.CoordinationV1Api(self.api_client)
        return coordination.read_namespaced_lease(self.name, self.namespace)

    def leader(self) -> str | None:
        holder: str | None = self.lease().spec.holder_identity
        return holder or None

    def wait_leader(self, timeout: float = 180) -> str:
        """The pod holding the Lease, once it is Ready and labelled leader (the Service)."""

        def leading() -> str | None:
            holder = self.leader()
            for pod in self.pods():
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                )
                labels = pod.metadata.labels or {}
                if pod.metadata.name == holder and ready and labels.get("corral.dev/leader"):
                    return holder
            return None

        leader: str = wait_for(leading, timeout=timeout, interval=1, what="an operator leader")
        return leader

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, "-n", self.namespace, *args)

    def operator_logs(self, tail: int = 40) -> str:
        return self.component_logs("operator", tail)

    def component_logs(self, component: str, tail: int = 40) -> str:
        """The last lines of every pod of one of the chart's components (operator, gateway)."""
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        done = self.kubectl("logs", "-l", selector, f"--tail={tail}", "--prefix")
        return done.stdout + done.stderr

    def diagnose(self) -> str:
        pods = self.kubectl("get", "pods,lease,endpoints", "-o", "wide")
        events = self.kubectl("get", "events", "--sort-by=.lastTimestamp")
        return "\n".join((pods.stdout, pods.stderr, events.stdout[-4000:], self.operator_logs()))
