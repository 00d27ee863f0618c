"""The runner image's entrypoint in a real container: tini is PID 1 (the pod sets `args`,
never `command`), reaps what the agent's Bash leaves behind, and forwards SIGTERM to the
runner, which stops cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import GatewayClient, Release, Sessions, kubectl, ready_pod, spec
from kubernetes import client

from corral.api import runtime
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

# Every process in the container: [pid, command, state, parent pid].
PROCESSES = """
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    rest = stat[stat.rindex(")") + 2:].split()
    found.append([int(pid), stat[stat.index("(") + 1:stat.rindex(")")], rest[0], int(rest[1])])
print(json.dumps(found))
"""


def processes(kubeconfig: Path, namespace: str, pod: str) -> list[list[Any]]:
    done = kubectl(kubeconfig, "-n", namespace, "exec", pod, "--", "python3", "-c", PROCESSES)
    assert done.returncode == 0, done.stderr
    found: list[list[Any]] = json.loads(done.stdout)
    return found


@pytest.fixture
def session_pod(
    operator: Release, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> Any:
    Sessions(custom, namespace).create("init", spec("LongRunning"))
    return ready_pod(core, namespace, "init")


def test_tini_is_pid_1_and_reaps_what_bash_leaves_behind(
    session_pod: Any,
    namespace: str,
    kubeconfig: Path,
    fake: FakeAnthropic,
    gateway: GatewayClient,
) -> None:
    pod = session_pod.metadata.name
    table = {p[0]: p for p in processes(kubeconfig, namespace, pod)}
    assert table[1][1] == "tini", table[1]
    # Orphans: each subshell exits at once, its `sleep` is re-parented to PID 1 and exits
    # two seconds later. Someone must wait() for it, or it stays a zombie for good.
    fake.add(bash("for i in 1 2 3; do (sleep 2 &); done; echo spawned"), text("done"))
    events = gateway.send(namespace, "init", "leave some processes behind").events
    assert events[-1]["type"] == "result" and events[-1]["subtype"] == "success", events[-3:]

    def sleeps_gone() -> list[list[Any]] | None:
        found = processes(kubeconfig, namespace, pod)
        alive = [p for p in found if p[1] == "sleep" and p[2] != "Z"]
        return None if alive else found

    after = wait_for(sleeps_gone, timeout=60, interval=1, what="the orphaned sleeps to exit")
    zombies = [p for p in after if p[2] == "Z"]
    assert zombies == [], zombies


def test_sigterm_reaches_the_runner_through_tini(
    session_pod: Any, namespace: str, kubeconfig: Path, core: client.CoreV1Api
) -> None:
    pod = session_pod.metadata.name
    # What the kubelet does on deletion: SIGTERM to PID 1 (here sent from inside the
    # container, so that the container's end can be read back from the pod's status).
    # (The exec'd process may be ended with the container before kubectl hears it exit,
    # so its exit code says nothing; the container's restart below does.)
    kubectl(
        kubeconfig, "-n", namespace, "exec", pod, "--", "python3", "-c", "import os; os.kill(1, 15)"
    )

    def restarted() -> Any:
        found = core.read_namespaced_pod(pod, namespace)
        for status in found.status.container_statuses or []:
            if status.name == runtime.CONTAINER_NAME and status.restart_count >= 1:
                return status
        return None

    status = wait_for(restarted, timeout=90, interval=1, what="the runner container to restart")
    terminated = status.last_state.terminated
    # tini passed SIGTERM on; the runner drained and exited by itself (no SIGKILL: 137).
    assert terminated.exit_code == 0, terminated
    previous = kubectl(kubeconfig, "-n", namespace, "logs", pod, "--previous")
    assert '"stopping"' in previous.stdout, previous.stdout[-2000:]
