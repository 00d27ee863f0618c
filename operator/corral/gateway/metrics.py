"""The gateway's Prometheus metrics, in a registry of its own.

Labels are bounded sets (route templates, status codes, fixed reasons): never a session
name, a user name or anything a caller chooses.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from corral.kube.events import EVENTS_DROPPED


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "corral_gateway_requests_total",
            "Requests answered, by runner route and HTTP status.",
            ["route", "code"],
            registry=r,
        )
        self.open_streams = Gauge(
            "corral_gateway_open_streams",
            "SSE responses and WebSockets open through the gateway now.",
            registry=r,
        )
        self.wakes = Counter(
            "corral_gateway_wakes_total",
            "Wakes of idle Hybrid sessions the gateway asked for.",
            registry=r,
        )
        self.hold_seconds = Histogram(
            "corral_gateway_hold_seconds",
            "How long requests were held for a session to become ready.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120),
            registry=r,
        )
        self.auth_cache = Counter(
            "corral_gateway_auth_cache_total",
            "Authentication (token) and authorization (access) cache lookups.",
            ["kind", "result"],
            registry=r,
        )
        self.reviews = Counter(
            "corral_gateway_reviews_total",
            "TokenReviews and SubjectAccessReviews sent to the API server.",
            ["kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "corral_gateway_upstream_errors_total",
            "Requests the gateway could not forward to a runner, by reason.",
            ["reason"],
            registry=r,
        )
        self.limited = Counter(
            "corral_gateway_limited_total",
            "Requests refused with 429 by the per-user limits.",
            ["limit"],
            registry=r,
        )
        self.stalled_readers = Counter(
            "corral_gateway_stalled_readers_total",
            "Streams to callers cut off because the caller took nothing for 60 s.",
            registry=r,
        )
        # The Events the gateway gave up on (corral.kube.events), beside its own metrics.
        r.register(EVENTS_DROPPED)

    def render(self) -> bytes:
        return generate_latest(self.registry)
