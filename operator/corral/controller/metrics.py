"""Prometheus metrics of the operator. Labels carry kinds and reasons, never names or secrets."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from corral.api.v1alpha1 import AgentSession

RECONCILE_SECONDS = Histogram(
    "corral_reconcile_duration_seconds",
    "Time to decide and apply one session's plan.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUE_LAG_SECONDS = Histogram(
    "corral_queue_wait_seconds",
    "Time a session waited in the work queue before its reconcile started.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
SCALE_DOWNS = Counter("corral_scale_downs_total", "Hybrid sessions scaled to zero when idle.")
WAKES = Counter("corral_wakes_total", "Hybrid sessions woken.")
POD_RESIZES = Counter(
    "corral_pod_resizes_total", "Pods whose start-up CPU limit was lowered to the session's."
)
WAKE_LATENCY = Histogram(
    "corral_wake_latency_seconds",
    "From a wake seen by the operator to the new pod created.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
RECONCILES = Counter(
    "corral_reconciles_total",
    "Reconciles by cause (what first queued the session: change, deadline, status-write, "
    "activity, retry, leadership) and outcome (acted: the decision asked for a write or an "
    "Event; nothing; failed).",
    ["cause", "outcome"],
)
ERRORS = Counter("corral_errors_total", "Reconcile errors by reason.", ["reason"])
LEADER = Gauge("corral_leader", "1 while this replica holds the leader Lease.")
ACTIVITY_REPORTS = Counter(
    "corral_activity_reports_total", "Activity reports received from runners."
)
ACTIVITY_REPORTS_REJECTED = Counter(
    "corral_activity_reports_rejected_total",
    "Activity reports refused: unauthenticated (no token), forbidden (a token not of the "
    "session and pod it claims), invalid (out of bounds), unknown (no such session pod), "
    "limited (over the reports a pod may send per second).",
    ["reason"],
)


class SessionCollector(Collector):
    """`corral_sessions{phase,pattern}` computed from the store at scrape time."""

    def __init__(self, sessions: Callable[[], Iterable[AgentSession]]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "corral_sessions", "AgentSessions by phase and pattern.", labels=["phase", "pattern"]
        )
        tally = Tally(
            (str(s.status.phase or "Unknown"), str(s.spec.pattern)) for s in self._sessions()
        )
        for (phase, pattern), count in sorted(tally.items()):
            family.add_metric([phase, pattern], count)
        yield family


def register_sessions(sessions: Callable[[], Iterable[AgentSession]]) -> SessionCollector:
    collector = SessionCollector(sessions)
    REGISTRY.register(collector)
    return collector
