"""Where the demo's sessions send their model calls, and the process that answers there.

Pods on the real node reach only addresses the project made (corral.cluster.node): the
model is served at node.OUTSIDE_IP:MODEL_PORT in the node's "outside" network namespace,
as the e2e suite serves its fake. Without ANTHROPIC_API_KEY that is the bundled fake
model; with it, a relay whose listening socket is in that namespace while the process
itself stays in the host's (which has the route out) and forwards to the real API.
Either is a long-lived process with a pid file in the cluster's state; `corral down`
stops it (and `cluster down` would, as a process of the node's namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.api import runtime
from corral.cluster import node, process
from corral.cluster.layout import Layout

# Not the e2e suite's 8089: both may serve in the e2e cluster's outside namespace at once.
MODEL_PORT = 8090
REAL_API = "https://api.anthropic.com"
FAKE_KEY = "sk-ant-fake-corral-up"
PROCESS_NAME = "dev-model"


@dataclass(frozen=True)
class ModelChoice:
    """The API key the example sessions get (their Secret), the base URL the chart gives
    every session, and what answers there (`upstream` None: the fake model)."""

    api_key: str
    base_url: str
    upstream: str | None

    @property
    def real(self) -> bool:
        return self.upstream is not None

    def describe(self) -> str:
        if self.real:
            return f"the real Anthropic API ({self.upstream}), with your ANTHROPIC_API_KEY"
        return (
            "the bundled FAKE model (no ANTHROPIC_API_KEY in the environment): it answers "
            '"fake reply to: <your message>" and costs nothing'
        )


def choose_model(environ: Mapping[str, str]) -> ModelChoice:
    """The one place that decides the model and the key (a gateway-side model proxy would
    change only this): the key from the environment, else the fake model."""
    base_url = f"http://{node.OUTSIDE_IP}:{MODEL_PORT}"
    key = environ.get(runtime.ENV_API_KEY, "").strip()
    if key:
        return ModelChoice(api_key=key, base_url=base_url, upstream=REAL_API)
    return ModelChoice(api_key=FAKE_KEY, base_url=base_url, upstream=None)


def argv(choice: ModelChoice) -> list[str]:
    if choice.upstream is None:
        serve = ["fake-anthropic", f"--host={node.OUTSIDE_IP}", f"--port={MODEL_PORT}"]
    else:
        serve = ["model-relay", f"--upstream={choice.upstream}", f"--port={MODEL_PORT}"]
    return [node._python(), "-m", "corral.cli", *serve]


def pid_file(layout: Layout) -> Path:
    return layout.pid_file(PROCESS_NAME)


def running(layout: Layout) -> int | None:
    return process.running_pid(pid_file(layout), node._python())


def start(layout: Layout, choice: ModelChoice) -> None:
    """(Re)start the model process for `choice` (a relay in place of a fake, or back)."""
    stop(layout)
    where = node.NodeLayout(layout)
    if choice.upstream is None:
        # The whole fake lives in the outside namespace: it needs nothing else.
        process.start(
            argv(choice), pid_file(layout), layout.log_file(PROCESS_NAME), netns=where.outside_netns
        )
    else:
        # The relay binds in the outside namespace itself and connects out from the host's.
        relay = [*argv(choice), f"--netns={where.outside_netns}", f"--host={node.OUTSIDE_IP}"]
        process.start(relay, pid_file(layout), layout.log_file(PROCESS_NAME))


def stop(layout: Layout) -> bool:
    return process.stop(pid_file(layout), node._python(), 5.0)


def serving(layout: Layout) -> bool:
    """The model answers where pods will call it (a TCP connection from the node's side)."""
    from corral.cluster import netns

    try:
        netns.connect(node.NodeLayout(layout).node_netns, node.OUTSIDE_IP, MODEL_PORT).close()
    except OSError:
        return False
    return True
