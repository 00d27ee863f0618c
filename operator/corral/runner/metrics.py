"""Prometheus metrics of one runner. Labels are agent names, outcomes, tool names and HTTP
statuses only: never prompts, replies or credentials.

prometheus_client's `__init__` imports its exposition module, and with it an HTTP server,
WSGI and urllib (a few hundredths of a CPU-second): the runner needs them only when
`/metrics` is first read, so the package is put in place without its `__init__`
(corral.runner.lazy_package) and the metric classes are imported from their modules.
"""

from __future__ import annotations

from corral.runner import lazy_package

lazy_package.install("prometheus_client", submodules_as_names=True)

# ruff: noqa: E402 -- the imports below must follow install().
from prometheus_client.metrics import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

# Tool names come from the model; cap them so a misbehaving one cannot bloat the labels.
MAX_TOOL_LABEL = 64


class RunnerMetrics:
    def __init__(self) -> None:
        # A registry per runner keeps tests (several runners in one process) independent.
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "corral_runner_messages",
            "Messages answered, by result subtype.",
            ["agent", "subtype"],
            registry=r,
        )
        self.turns = Counter(
            "corral_runner_turns", "Model turns taken (SDK num_turns).", ["agent"], registry=r
        )
        self.tokens = Counter(
            "corral_runner_tokens", "Tokens used, by kind.", ["agent", "kind"], registry=r
        )
        self.cost = Counter(
            "corral_runner_cost_usd", "Token cost as the SDK estimates it.", ["agent"], registry=r
        )
        self.tool_calls = Counter(
            "corral_runner_tool_calls", "Tool calls the model made.", ["agent", "tool"], registry=r
        )
        self.api_retries = Counter(
            "corral_runner_api_retries",
            "Model API errors the CLI retried, by HTTP status.",
            ["agent", "status"],
            registry=r,
        )
        self.cli_restarts = Counter(
            "corral_runner_cli_restarts",
            "CLI processes restarted after a crash.",
            ["agent"],
            registry=r,
        )
        self.busy = Gauge(
            "corral_runner_busy", "1 while the agent runs a message.", ["agent"], registry=r
        )
        self.background_tasks = Gauge(
            "corral_runner_background_tasks",
            "Background tasks the agent started that are still running.",
            ["agent"],
            registry=r,
        )
        self.clients = Gauge(
            "corral_runner_clients",
            "WebSocket clients connected now (each keeps a Hybrid session awake, for "
            "spec.clientIdleTimeout after its last message when that is set).",
            registry=r,
        )
        self.egress_gate_seconds = Gauge(
            "corral_runner_egress_gate_seconds",
            "How long from the runner's start until the NetworkPolicy was seen filtering "
            "the pod's egress: what CLI starts wait for (on a pod's first start, its "
            "messages; corral.runner.egress_gate; 0 without a canary).",
            registry=r,
        )
        self.egress_gate_unconfirmed = Gauge(
            "corral_runner_egress_gate_unconfirmed",
            "1 when the gate opened without the canary showing the pod's egress filtered "
            "(its maximum wait passed).",
            registry=r,
        )
        self.scheduled_wakeups = Gauge(
            "corral_runner_scheduled_wakeups",
            "Wakeups the agent scheduled in its CLI that have not fired yet.",
            ["agent"],
            registry=r,
        )
        # A runner "turn" is one message to its result, however many model calls it took.
        self.turn_duration = Histogram(
            "corral_runner_turn_duration_seconds",
            "Wall time from accepting a message to its result.",
            ["agent"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )

    def tool(self, agent: str, name: str) -> None:
        self.tool_calls.labels(agent, name[:MAX_TOOL_LABEL]).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
