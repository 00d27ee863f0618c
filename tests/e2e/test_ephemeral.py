"""Ephemeral sessions in real containers: the runner, the bundled CLI, real limits.

The CLI inside the pod talks to the fake Anthropic API in the node's "outside" namespace,
allowed by the session's egress rule; a scripted `tool_use` makes it really run Bash in
the container. The kubelet, containerd and the kernel decide OOM kills and evictions; the
operator has to report them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from e2e_support import Release, Sessions, condition, session_pods, spec
from kubernetes import client

from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def sessions(
    operator: Release, custom: client.CustomObjectsApi, namespace: str
) -> Iterator[Sessions]:
    yield Sessions(custom, namespace)


def tool_results(fake: FakeAnthropic) -> list[str]:
    """The text of every tool_result the CLI sent back, in order."""
    found = []
    for body in fake.message_bodies():
        for message in body.get("messages", []):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for block in content:
                if block.get("type") == "tool_result":
                    inner = block.get("content")
                    if isinstance(inner, list):
                        inner = "".join(part.get("text", "") for part in inner)
                    found.append(str(inner))
    return list(dict.fromkeys(found))


def test_a_session_runs_bash_in_a_real_container_and_reports_success(
    sessions: Sessions, fake: FakeAnthropic, core: client.CoreV1Api
) -> None:
    fake.add(
        bash(
            "echo hello from $(hostname) > report.txt && cat report.txt && id -u && pwd"
            " && (touch /usr/corral-was-here 2>&1 || true)"
        ),
        text("the report is written"),
    )
    sessions.create("hello", spec("Ephemeral", prompt="Write report.txt", retries=0))
    status = sessions.wait_phase("hello", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    result = status["result"]
    assert result["subtype"] == "success"
    assert result["text"] == "the report is written"
    assert result["numTurns"] == 2 and result["sessionId"]
    # The CLI really ran the command, in the pod: as the runner user, in the workspace,
    # under a read-only root filesystem.
    (output,) = tool_results(fake)
    lines = output.splitlines()
    assert lines[0].startswith("hello from hello-"), output
    assert lines[1:3] == ["1000", "/session/workspace"], output
    assert "Read-only file system" in output, output
    # The request reached the fake over the pod network, from the pod's address.
    assert fake.requests, "the fake saw no request"
    wait_for(lambda: session_pods(core, sessions.namespace, "hello") == [], timeout=60)


def test_a_tool_past_the_memory_limit_is_oom_killed_and_reported(
    sessions: Sessions, fake: FakeAnthropic
) -> None:
    # 1.5 GiB of touched memory in a pod limited to 768Mi: the kernel's OOM killer acts
    # inside the pod's memory cgroup, containerd records the OOM, the kubelet reports it.
    fake.add(
        bash("python3 -c 'b = b\"x\" * (1536 * 2**20); print(len(b))'"),
        text("allocated"),
    )
    sessions.create("hungry", spec("Ephemeral", prompt="Allocate memory", retries=0))
    status = sessions.wait_phase("hungry", ("Succeeded", "Failed"))
    failed = condition(status, "Failed")
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    assert failed is not None and failed["reason"] == "OOMKilled", json.dumps(status, indent=1)


def test_a_tool_past_the_disk_limit_is_evicted_and_reported(
    sessions: Sessions, fake: FakeAnthropic
) -> None:
    # 1 GiB of ephemeral storage; the tool writes 1.2 GiB into the workspace (an emptyDir)
    # and waits: the kubelet's eviction manager measures the pod and evicts it.
    # The tool then waits up to 5 minutes (its own timeout raised to match): the eviction
    # manager's measurement of an emptyDir can lag well past its 10 s period on a loaded
    # node, and a tool that returned first would let the run succeed.
    fill = "dd if=/dev/zero of=big bs=1M count=1200 status=none; ls -la big; sleep 290"
    step = bash(fill)
    step.input["timeout"] = 300_000
    fake.add(step, text("wrote it"))
    sessions.create("filler", spec("Ephemeral", prompt="Fill the disk", retries=0))
    status = sessions.wait_phase("filler", ("Succeeded", "Failed"), timeout=420)
    failed = condition(status, "Failed")
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    assert failed is not None and failed["reason"] == "Evicted", json.dumps(status, indent=1)
    assert "ephemeral" in failed["message"].lower() or "exceeds" in failed["message"].lower()
