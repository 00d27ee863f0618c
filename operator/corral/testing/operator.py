"""Run `corral operator` as a real subprocess for integration tests and benchmarks.

Each harness run gets its own namespace prefix and Lease, so two test runs (or a test run
and a developer's operator) on one cluster never act on each other's sessions.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corral.api import runtime
from corral.api.activity import activity_token
from corral.config import OperatorConfig
from corral.testing.kube import wait_for

KWOK_TOLERATION = {
    "key": "kwok.x-k8s.io/node",
    "operator": "Equal",
    "value": "fake",
    "effect": "NoSchedule",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# KWOK's pods run nothing, so no model is called: the operator hands every runner a
# placeholder key (sessions without any key do not start; see corral.controller.credentials).
PLACEHOLDER_KEY = {runtime.ENV_API_KEY: "sk-ant-placeholder-kwok"}


def kwok_operator_config(namespace: str, **overrides: object) -> OperatorConfig:
    """Operator settings for sessions on KWOK's fake nodes.

    KWOK's pods run no runner, so nothing ever reports activity; the URL (where runners in
    the cluster would reach an operator Service) makes the operator treat Hybrid sessions as
    reporting ones, which then go idle after their timeout as if every runner were quiet.
    """
    body: dict[str, object] = {
        "namespace": namespace,
        "tolerations": [KWOK_TOLERATION],
        "activityUrl": f"http://corral.{namespace}.svc:8081/v1/activity",
        "runnerEnv": dict(PLACEHOLDER_KEY),
        # Nobody's heartbeat can come: a new leader has nothing to wait for.
        "failoverGraceSeconds": 0,
        # KWOK's nodes cannot resize a pod in place (the API server answers 422), so the
        # start-up CPU boost is off, as docs/operations.md advises for such nodes.
        "startupCpuLimit": "0",
    }
    body.update(overrides)
    return OperatorConfig.model_validate(body)


@dataclass
class OperatorProcess:
    kubeconfig: Path
    config: OperatorConfig
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    lease_name: str = "corral-operator"
    identity: str = "test-operator"
    lease_seconds: float = 4.0
    renew_seconds: float = 1.0
    workers: int = 64
    leader_election: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Signs activity tokens (config.activityKeyFile); operators sharing a Lease share it.
    activity_key: bytes = field(default_factory=lambda: secrets.token_hex(32).encode())
    # Put first on the operator's PYTHONPATH: run another checkout's operator (benchmarks).
    pythonpath: str | None = None
    # Added to the operator's environment.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.identity}.log"

    def start(self) -> OperatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / f"operator-{self.identity}.yaml"
        # Defaults left out: the operator restores its own, and an older tree's operator
        # (a side-by-side bench) is not refused a setting it does not know.
        body = self.config.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
        if "activityKeyFile" not in body:
            key_path = self.workdir / f"activity-key-{self.identity}"
            key_path.write_bytes(self.activity_key + b"\n")
            key_path.chmod(0o600)
            body["activityKeyFile"] = str(key_path)
        config_path.write_text(yaml.safe_dump(body))
        argv = [
            sys.executable,
            "-m",
            "corral.cli",
            "operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={config_path}",
            f"--port={self.port}",
            "--host=127.0.0.1",
            f"--workers={self.workers}",
            f"--lease-name={self.lease_name}",
            f"--lease-seconds={self.lease_seconds}",
            f"--renew-seconds={self.renew_seconds}",
            f"--identity={self.identity}",
        ]
        argv += [f"--namespace={n}" for n in self.namespaces]
        if not self.leader_election:
            argv.append("--no-leader-election")
        log = self.log_path.open("ab")
        env = {**os.environ, **self.env}
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (self.pythonpath, env.get("PYTHONPATH")) if p
            )
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_for(self._ready, timeout=30, what=f"operator {self.identity} readiness")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited ({self.proc.returncode}); log:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label text contains `labels`."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def is_leader(self) -> bool:
        try:
            return self.metric("corral_leader") == 1.0
        except (urllib.error.URLError, OSError):
            return False

    def wait_leader(self, timeout: float = 30) -> None:
        wait_for(self.is_leader, timeout=timeout, what=f"{self.identity} to lead")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def activity_token(self, namespace: str, name: str, uid: str, pod_name: str) -> str:
        """The token this operator expects from `pod_name` of the session with `uid`."""
        return activity_token(self.activity_key, namespace, name, uid, pod_name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def report_activity(
    url: str,
    namespace: str,
    name: str,
    pod_name: str,
    busy: bool,
    token: str | None,
    **fields: object,
) -> int:
    """Post an activity report as a runner would (with `token`; None: none); the HTTP status."""
    import json

    body = json.dumps(
        {"namespace": namespace, "name": name, "podName": pod_name, "busy": busy, **fields}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url}/v1/activity", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
