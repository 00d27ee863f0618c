"""An agent's planted start-up hook cannot reach past the session's NetworkPolicy.

kube-router, the real node's NetworkPolicy agent, leaves a new pod's egress unfiltered for
up to about a second (tests/e2e/test_policy_window_benchmark.py), and the CLI runs, as it
starts, the hooks it finds in the project's `.claude/settings.json`, a file the agent can
write. Here the agent plants one (with Bash, as any agent can): a SessionStart hook that
tries, again and again for four seconds, a private server no session policy allows (the
node's decoy). The session sleeps, its user talks to it, and the new pod's CLI runs the
hook: the runner's egress gate held the CLI until the policy filtered the pod, so no try
connects, and the decoy counts no connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import GatewayClient, Release, Sessions, kubectl, ready_pod, session_pods, spec
from kubernetes import client

from corral.cluster import node
from corral.testing.anthropic_script import bash, text
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for
from corral.testing.outside import Decoy

pytestmark = pytest.mark.e2e

DECOY_PORT = 8091
IDLE = "20s"
PROBE = f"""import os, socket, time
end = time.monotonic() + 4
tries = []
while time.monotonic() < end:
    sock = socket.socket()
    sock.settimeout(0.3)
    try:
        sock.connect(("{node.PRIVATE_DECOY_IP}", {DECOY_PORT}))
        said = "connected"
    except OSError as exc:
        said = type(exc).__name__
    finally:
        sock.close()
    tries.append(f"try {{time.time():.3f}} {{said}}")
    time.sleep(0.05)
with open(os.path.join(os.environ.get("CLAUDE_PROJECT_DIR", "."), "hook-tries.txt"), "a") as f:
    f.write("\\n".join(tries) + "\\n")
"""
HOOK = {
    "hooks": {
        "SessionStart": [
            {"hooks": [{"type": "command", "command": 'python3 "$CLAUDE_PROJECT_DIR/.probe.py"'}]}
        ]
    }
}
PLANT = (
    f"mkdir -p .claude && cat > .probe.py <<'EOF'\n{PROBE}EOF\n"
    f"cat > .claude/settings.json <<'EOF'\n{json.dumps(HOOK)}\nEOF\necho planted"
)


# The runner's log line when a CLI boots behind the shut gate (nothing left behind).
EARLY_START = "CLI started before the egress gate opened"


@pytest.fixture
def decoy(node_layout: node.NodeLayout) -> Iterator[Decoy]:
    served = Decoy(node_layout.outside_netns, node.PRIVATE_DECOY_IP, DECOY_PORT).start()
    yield served
    served.stop()


def test_a_planted_start_up_hook_cannot_reach_past_the_policy(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    kubeconfig: Path,
    gateway: GatewayClient,
    decoy: Decoy,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("planter", spec("Hybrid", idleTimeout=IDLE, storage={"size": "1Gi"}))
    first = ready_pod(core, namespace, "planter", timeout=420).metadata.name
    fake.add(bash(PLANT), text("planted"))
    reply = gateway.send(namespace, "planter", "plant the hook")
    assert reply.status == 200 and reply.events[-1].get("subtype") == "success", reply
    assert "planted" in json.dumps(fake.message_bodies()[1]["messages"][-1])
    # The first pod had nothing left behind: its CLI booted behind the shut gate.
    first_logs = kubectl(kubeconfig, "-n", namespace, "logs", first).stdout
    assert EARLY_START in first_logs, first_logs[-3000:]

    sessions.wait_phase("planter", "Idle", timeout=120)
    wait_for(lambda: session_pods(core, namespace, "planter") == [], timeout=90)

    # The user talks to the sleeping session: a new pod, whose CLI runs the hook.
    fake.reset()
    fake.add(bash("cat hook-tries.txt"), text("read"))
    reply = gateway.send(namespace, "planter", "what did the hook see?")
    assert reply.status == 200 and reply.events[-1].get("subtype") == "success", reply
    seen = json.dumps(fake.message_bodies()[1]["messages"][-1])
    tries = [word for word in seen.split("try ")[1:]]
    assert tries, f"the planted hook did not run: {seen[-2000:]}"
    assert not [t for t in tries if "connected" in t.split("\\n")[0]], seen[-2000:]
    assert decoy.connections == 0

    # The runner says how long it held the CLI, and that the policy, not the maximum
    # wait, opened the gate.
    pod = ready_pod(core, namespace, "planter").metadata.name
    logs = kubectl(kubeconfig, "-n", namespace, "logs", pod).stdout
    # A woken pod's volume holds what the agent left: its CLI waited for the gate.
    assert pod != first and EARLY_START not in logs, logs[-3000:]
    gate = [json.loads(line) for line in logs.splitlines() if "egress" in line and "{" in line]
    opened = [g for g in gate if g.get("msg", "").startswith("egress filtered")]
    assert opened, logs[-3000:]
    print(f"egress gate: {json.dumps(opened[0])}; the hook's tries: {len(tries)}")
