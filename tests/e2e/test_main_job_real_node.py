"""`corral up` on the real node: the README's first command hosts real sessions.

Runs the command itself (a subprocess, as a user runs it) against the e2e cluster's state
directory, so that it reuses the one real node this machine may have: the Helm chart,
the fake model in the node's outside namespace, the examples fitted to the node. Then
the examples' states, the Warning Events, and the `corral` CLI as the user `corral up`
made, through the gateway via the API server's service proxy. `corral down
--keep-cluster` takes the demo away again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import E2E_ROOT
from corral.cluster import node
from corral.cluster.layout import Layout
from corral.devenv import install

CORRAL = [sys.executable, "-m", "corral.cli"]
EXAMPLES = {"fizzbuzz", "docs-assistant", "repo-janitor", "review-team"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORRAL_G"))}
    env.pop("KUBECONFIG", None)
    return {**env, "CORRAL_STATE_DIR": str(E2E_ROOT), **extra}


@pytest.fixture(scope="module")
def main_job(real_node_cluster: Layout) -> Iterator[tuple[subprocess.CompletedProcess[str], str]]:
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = subprocess.run(
        [*CORRAL, "up", "--sessions-timeout=420"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1200,
        check=False,
    )
    print(done.stdout[-4000:], done.stderr[-6000:], file=sys.stderr)
    yield done, since
    down = subprocess.run(
        [*CORRAL, "down", "--keep-cluster"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        check=False,
    )
    assert down.returncode == 0, down.stderr[-3000:]
    from corral.devenv import model

    assert model.running(real_node_cluster) is None, "`corral down` left the model running"


def _sessions(layout: Layout) -> dict[str, dict[str, object]]:
    out = install.kubectl(layout, "-n", "demo", "get", "ags", "-o", "json")
    return {item["metadata"]["name"]: item for item in json.loads(out)["items"]}


def test_corral_up_runs_the_examples_on_the_real_node(
    main_job: tuple[subprocess.CompletedProcess[str], str], real_node_cluster: Layout
) -> None:
    done, since = main_job
    assert done.returncode == 0, done.stderr[-4000:]
    # It says which model the sessions use, and ends with what to do next.
    assert "FAKE model" in done.stderr
    assert "What next:" in done.stdout and "corral ls -A" in done.stdout

    sessions = _sessions(real_node_cluster)
    assert set(sessions) == EXAMPLES
    fizzbuzz = sessions["fizzbuzz"]["status"]
    assert isinstance(fizzbuzz, dict)
    assert fizzbuzz["phase"] == "Succeeded", fizzbuzz
    assert fizzbuzz["result"]["subtype"] == "success", fizzbuzz
    assert "fake reply to:" in fizzbuzz["result"]["text"], fizzbuzz
    assert fizzbuzz["numTurns"] >= 1 and fizzbuzz.get("totalCostUsd") is not None, fizzbuzz
    for name in EXAMPLES - {"fizzbuzz"}:
        status = sessions[name]["status"]
        assert isinstance(status, dict)
        assert status["phase"] == "Running" and status["numTurns"] >= 1, (name, status)
        # A real runner container on the real node, not a KWOK pod.
        pod = json.loads(
            install.kubectl(
                real_node_cluster, "-n", "demo", "get", "pod", status["podName"], "-o", "json"
            )
        )
        assert pod["spec"]["nodeName"] == "corral-node", name
        runner = pod["status"]["containerStatuses"][0]
        assert runner["ready"] and "running" in runner["state"], (name, runner)
        assert runner["image"].startswith("corral.dev/runner"), runner

    # A clean start: no Warning Event in the namespaces `corral up` made or used, but
    # for the kinds that are about this machine or the control plane (install.not_corrals).
    warnings = [
        line
        for line in install.warning_events(real_node_cluster, since)
        if line.split(" ", 1)[0] in ("demo", "corral-system", "kube-system", "default")
        and install.not_corrals(line) is None
    ]
    assert warnings == []


def test_printed_commands_work_as_printed(
    main_job: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    """The admin's kubectl line of `What next`, run by a shell exactly as printed."""
    done, _ = main_job
    [line] = [ln for ln in done.stdout.splitlines() if "get ags,pods -n demo" in ln]
    ran = subprocess.run(
        ["bash", "-c", line.strip()],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "fizzbuzz" in ran.stdout and "docs-assistant" in ran.stdout


def test_cli_talks_to_a_session_through_the_gateway(
    main_job: tuple[subprocess.CompletedProcess[str], str], real_node_cluster: Layout
) -> None:
    """The user kubeconfig `corral up` printed, as printed: `corral ls`, `corral send` and
    `corral transcript` through the service proxy (no gateway URL anywhere)."""
    done, _ = main_job
    user = Path(real_node_cluster.root / "user.kubeconfig")
    assert f"export KUBECONFIG={user}" in done.stdout
    env = _env(KUBECONFIG=str(user))

    listed = subprocess.run(
        [*CORRAL, "ls", "-A"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    for name in EXAMPLES:
        assert name in listed.stdout
    assert "Succeeded" in listed.stdout

    sent = subprocess.run(
        [*CORRAL, "send", "demo/docs-assistant", "hello from the e2e suite"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "fake reply to: hello from the e2e suite" in sent.stdout

    transcript = subprocess.run(
        [*CORRAL, "transcript", "demo/docs-assistant"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert transcript.returncode == 0, transcript.stderr
    assert "hello from the e2e suite" in transcript.stdout


def test_fake_model_is_a_process_in_the_outside_namespace(
    main_job: tuple[subprocess.CompletedProcess[str], str], real_node_cluster: Layout
) -> None:
    from corral.cluster import cleanup, netns
    from corral.devenv import model

    pid = model.running(real_node_cluster)
    assert pid is not None
    outside = node.NodeLayout(real_node_cluster).outside_netns
    assert cleanup.netns_of(pid) == cleanup.netns_id(outside)
    assert netns.exists(node.NodeLayout(real_node_cluster).wiring.outside_netns)
