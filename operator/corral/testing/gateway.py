"""Sessions, pods and users made the way the operator and an admin would make them, for
tests and benchmarks of the gateway that play the operator's part themselves.

Pods point at a runner on loopback (status written here, a scheduler that does not exist,
so nothing else writes it); users are ServiceAccounts with a Role on
agentsessions/connect and a TokenRequest token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from corral.api import runtime
from corral.gateway.directory import Directory
from corral.kube.client import KubeClient
from corral.kube.informer import Informer
from corral.render.meta import MANAGED_BY_LABEL, MANAGER
from corral.testing.kube import wait_for

GROUP, VERSION, PLURAL = "corral.dev", "v1alpha1", "agentsessions"


def _session(name: str, pattern: str = "LongRunning", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {"pattern": pattern, **spec},
    }


class World:
    """The API objects of this module, made the way the operator would make them."""

    def __init__(self, api: client.ApiClient, namespace: str, runner_port: int) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.namespace = namespace
        self.runner_port = runner_port

    def create_session(self, name: str, pattern: str = "LongRunning", **spec: Any) -> str:
        body: dict[str, Any] = self.custom.create_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, PLURAL, _session(name, pattern, **spec)
        )
        return str(body["metadata"]["uid"])

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )

    def create_ready_pod(self, session: str, uid: str, ip: str = "127.0.0.1") -> str:
        pod_name = f"{session}-{uuid.uuid4().hex[:5]}"
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=pod_name,
                labels={MANAGED_BY_LABEL: MANAGER},
                owner_references=[
                    client.V1OwnerReference(
                        api_version=f"{GROUP}/{VERSION}", kind="AgentSession", name=session,
                        uid=uid, controller=True,
                    )
                ],
            ),
            spec=client.V1PodSpec(
                scheduler_name="nobody-schedules-this",
                containers=[
                    client.V1Container(
                        name="runner", image="corral.dev/runner:test",
                        ports=[client.V1ContainerPort(
                            name=runtime.RUNNER_PORT_NAME, container_port=self.runner_port)],
                    )
                ],
            ),
        )  # fmt: skip
        self.core.create_namespaced_pod(self.namespace, pod)
        self.core.patch_namespaced_pod_status(
            pod_name,
            self.namespace,
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
        )
        return pod_name

    def user(self, name: str, sessions: list[str] | None, verbs: list[str]) -> str:
        """A ServiceAccount allowed `verbs` on agentsessions/connect (all sessions if None)."""
        self.core.create_namespaced_service_account(
            self.namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
        rule = client.V1PolicyRule(
            api_groups=[GROUP], resources=["agentsessions/connect"], verbs=verbs,
            resource_names=sessions,
        )  # fmt: skip
        self.rbac.create_namespaced_role(
            self.namespace, client.V1Role(metadata=client.V1ObjectMeta(name=name), rules=[rule])
        )
        self.rbac.create_namespaced_role_binding(
            self.namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=name),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=name),
                subjects=[client.RbacV1Subject(
                    kind="ServiceAccount", name=name, namespace=self.namespace)],
            ),
        )  # fmt: skip
        token = self.core.create_namespaced_service_account_token(
            name, self.namespace, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
        )  # fmt: skip
        assert token.status is not None
        return str(token.status.token)


@contextlib.asynccontextmanager
async def watched_directory(kube: KubeClient, namespace: str) -> AsyncIterator[Directory]:
    """A gateway's directory of `namespace`, filled by the two informers `corral gateway`
    runs (sessions, and the pods Corral manages), yielded once both have listed."""
    directory = Directory(kube)
    informers = [
        Informer(kube, "AgentSession", "", directory.on_session, [namespace]),
        Informer(kube, "Pod", f"{MANAGED_BY_LABEL}={MANAGER}", directory.on_pod, [namespace]),
    ]
    tasks = [asyncio.create_task(informer.run()) for informer in informers]
    try:
        for informer in informers:
            await asyncio.wait_for(informer.synced.wait(), 30)
        yield directory
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scratch_namespace(core: client.CoreV1Api, prefix: str) -> Iterator[str]:
    """A namespace of its own for a test module (outside any operator's prefix), deleted after."""
    name = f"{prefix}-{uuid.uuid4().hex[:4]}"
    make_namespace(core, name)
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def make_namespace(core: client.CoreV1Api, name: str) -> None:
    """A plain namespace (no operator watches it), once its default ServiceAccount exists."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException:
            return False
        return True

    wait_for(has_default_account, timeout=30, what=f"the default ServiceAccount in {name}")


@dataclass
class LocalRunner:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_local_runner(base: Path, spec: dict[str, Any], env: dict[str, str]) -> LocalRunner:
    """A runner on loopback with its built-in fake model, ready to take messages."""
    base.mkdir(parents=True, exist_ok=True)
    spec_file = base / "session.json"
    spec_file.write_text(json.dumps(spec))
    port = free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    run_env.update(env)
    log_path = base / "runner.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli", "runner", "--session", str(spec_file),
             "--workspace", str(base / "ws"), "--state-dir", str(base / "state"),
             "--host", "127.0.0.1", "--port", str(port), "--fake-anthropic"],
            stdout=log, stderr=subprocess.STDOUT, env=run_env,
        )  # fmt: skip
    runner = LocalRunner(proc, port, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"runner exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(ready, timeout=120, what="the runner to be ready")
    except BaseException:
        runner.stop()
        raise
    return runner
