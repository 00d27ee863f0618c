"""Metered model usage: Prometheus counters at once, each session's status in coalesced
writes, and what a session (and its namespace) has spent, for budgets.

Status writes add this replica's unwritten usage to what status holds, as a merge patch
that carries the session's resourceVersion: a concurrent write by another replica (or the
operator) makes it fail with 409 and the usage stays pending for the next round, so every
token is added exactly once whatever the number of replicas. Between writes a replica
counts its pending usage on top of status (budgets see it at once); other replicas' usage
shows up within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter

from corral.api.v1alpha1 import HOUR_CACHE_WRITES
from corral.controller import conditions
from corral.gateway.directory import Directory, SessionView
from corral.gateway.pricing import PriceTable
from corral.gateway.spend import NamespaceSpend
from corral.gateway.usage import TokenUsage
from corral.kube.client import CONNECTION_ERRORS, ApiError, KubeClient
from corral.kube.events import GATEWAY_COMPONENT, EventTarget, event_manifest

log = logging.getLogger("corral.gateway.metering")
JSON = dict[str, Any]
Key = tuple[str, str]
BUDGET_CONDITION = conditions.BUDGET_EXCEEDED
TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write": "cache_creation_input_tokens",
}
MAX_MODELS_IN_STATUS = 64
# How long a BudgetExceeded note holds before a refused call may note it again (a watch
# brings the condition well within it), and how many sessions' notes are held.
BUDGET_NOTE_SECONDS = 60.0
BUDGET_NOTES_MAX = 10_000
# Each session's last metered prompt cost, the estimate of its next call's (bounded; a
# session quiet this long has its estimate forgotten, as a new one starts without).
PROMPT_ESTIMATES_MAX = 10_000
PROMPT_ESTIMATE_SECONDS = 3600.0
# Writes of the condition tried when other writers keep changing the session first (409
# Conflict), each on the newer version the watch brings within the wait.
BUDGET_WRITE_ATTEMPTS = 4
BUDGET_WATCH_WAIT_SECONDS = 5.0


class ModelMetrics:
    """Labels: namespace (sessions live in namespaces an admin creates), the model's
    price-table name (or `other`), fixed kinds and reasons. Never a session name or key."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "corral_model_tokens_total",
            "Tokens metered by the model proxy, by namespace, model and kind.",
            ["namespace", "model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "corral_model_cost_usd_total",
            "Cost of metered tokens at the configured prices, by namespace and model.",
            ["namespace", "model"],
            registry=registry,
        )
        self.requests = Counter(
            "corral_model_requests_total",
            "Model calls answered by the model proxy, by HTTP status.",
            ["code"],
            registry=registry,
        )
        self.refused = Counter(
            "corral_model_refused_total",
            "Model calls refused before the upstream, by reason.",
            ["reason"],
            registry=registry,
        )
        self.status_writes = Counter(
            "corral_model_status_writes_total",
            "Writes of metered usage to session status, by result.",
            ["result"],
            registry=registry,
        )


@dataclass
class _Pending:
    namespace: str
    name: str
    uid: str
    requests: int = 0
    cost_usd: float = 0.0
    models: dict[str, TokenUsage] = field(default_factory=dict)
    model_costs: dict[str, float] = field(default_factory=dict)


def _budget_condition_set(conditions: list[Any], reason: str) -> bool:
    return any(
        isinstance(c, dict)
        and (c.get("type"), c.get("status"), c.get("reason")) == (BUDGET_CONDITION, "True", reason)
        for c in conditions
    )


def _with_budget_condition(
    conditions: list[Any], reason: str, message: str, now: str
) -> list[JSON]:
    """`conditions` with BudgetExceeded True for `reason` in place of any earlier one."""
    kept = [c for c in conditions if isinstance(c, dict) and c.get("type") != BUDGET_CONDITION]
    return [
        *kept,
        {
            "type": BUDGET_CONDITION,
            "status": "True",
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": now,
        },
    ]


def merged_usage(current: JSON | None, pending: _Pending, now: str) -> JSON:
    """status.modelUsage after adding `pending` to `current` (pure)."""
    current = current if isinstance(current, dict) else {}
    result: JSON = {
        "requests": _int(current.get("requests")) + pending.requests,
        "costUsd": round(_float(current.get("costUsd")) + pending.cost_usd, 6),
        "updateTime": now,
    }
    models: dict[str, JSON] = {}
    for row in current.get("models") or ():
        if isinstance(row, dict) and isinstance(row.get("model"), str):
            models[row["model"]] = dict(row)
    for model, usage in pending.models.items():
        row = models.setdefault(model, {"model": model})
        for key, value in _camel_usage(usage).items():
            row[key] = _int(row.get(key)) + value
        row["costUsd"] = round(_float(row.get("costUsd")) + pending.model_costs[model], 6)
    kept = sorted(models.values(), key=lambda row: row["model"])[:MAX_MODELS_IN_STATUS]
    result.update(_camel_usage(_usage_of_row(current)))
    result.update({k: result[k] + v for k, v in _camel_usage(_diff(pending)).items()})
    result["models"] = kept
    return result


def _diff(pending: _Pending) -> TokenUsage:
    total = TokenUsage()
    for usage in pending.models.values():
        total.add(usage)
    return total


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _float(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else 0.0


def _camel_usage(usage: TokenUsage) -> dict[str, int]:
    return {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "cacheReadInputTokens": usage.cache_read_input_tokens,
        "cacheCreationInputTokens": usage.cache_creation_input_tokens,
        "webSearchRequests": usage.web_search_requests,
        HOUR_CACHE_WRITES: usage.cache_creation_1h_input_tokens,
    }


def _usage_of_row(row: JSON) -> TokenUsage:
    return TokenUsage(
        input_tokens=_int(row.get("inputTokens")),
        output_tokens=_int(row.get("outputTokens")),
        cache_read_input_tokens=_int(row.get("cacheReadInputTokens")),
        cache_creation_input_tokens=_int(row.get("cacheCreationInputTokens")),
        web_search_requests=_int(row.get("webSearchRequests")),
        cache_creation_1h_input_tokens=_int(row.get(HOUR_CACHE_WRITES)),
    )


def status_cost(session: SessionView) -> float:
    usage = session.model_usage
    return _float(usage.get("costUsd")) if isinstance(usage, dict) else 0.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shift(held: dict[str, float], key: str, usd: float) -> None:
    left = held.get(key, 0.0) + usd
    if left > 1e-12:
        held[key] = left
    else:
        held.pop(key, None)  # nothing held: no entry (bounded by the calls in flight)


class Meter:
    def __init__(
        self,
        prices: PriceTable,
        metrics: ModelMetrics,
        directory: Directory,
        kube: KubeClient | None,
        interval_seconds: float = 10.0,
        spend: NamespaceSpend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spend = spend
        self.prices = prices
        self.metrics = metrics
        self.directory = directory
        self.kube = kube
        self.interval = interval_seconds
        self._pending: dict[Key, _Pending] = {}
        self._inflight: dict[Key, _Pending] = {}  # being written now
        # (session uid, reason) noted lately: the condition is not in the view until the
        # watch brings it, and refused calls keep coming meanwhile. Once it expires, a
        # session whose condition was cleared (a raised budget) is noted again.
        # USD held by calls in flight, until they are metered: per session uid and namespace.
        self._reserved: dict[str, float] = {}
        self._reserved_ns: dict[str, float] = {}
        self._budget_noted: TTLCache[tuple[str, str], bool] = TTLCache(
            maxsize=BUDGET_NOTES_MAX, ttl=BUDGET_NOTE_SECONDS, timer=clock
        )
        self._last_prompt_usd: TTLCache[str, float] = TTLCache(
            maxsize=PROMPT_ESTIMATES_MAX, ttl=PROMPT_ESTIMATE_SECONDS, timer=clock
        )

    # --- counting ------------------------------------------------------------------------

    def record(self, session: SessionView, model: str | None, usage: TokenUsage) -> float:
        """Count one response's usage; returns its cost in USD."""
        label = self.prices.label(model)
        cost = self.prices.cost(model, usage)
        self._last_prompt_usd[session.uid] = self.prices.prompt_cost(model, usage)
        for kind, attribute in TOKEN_KINDS.items():
            value = getattr(usage, attribute)
            if value:
                self.metrics.tokens.labels(session.namespace, label, kind).inc(value)
        self.metrics.cost.labels(session.namespace, label).inc(cost)
        key = (session.namespace, session.name)
        pending = self._pending.get(key)
        if pending is None or pending.uid != session.uid:
            pending = self._pending[key] = _Pending(session.namespace, session.name, session.uid)
        pending.requests += 1
        pending.cost_usd += cost
        pending.models.setdefault(label, TokenUsage()).add(usage)
        pending.model_costs[label] = pending.model_costs.get(label, 0.0) + cost
        if self.spend is not None:
            self.spend.add(session.namespace, cost)
        return cost

    def session_spent(self, session: SessionView) -> float:
        """Status's figure plus this replica's usage not yet in it."""
        key = (session.namespace, session.name)
        extra = sum(
            p.cost_usd
            for p in (self._pending.get(key), self._inflight.get(key))
            if p is not None and p.uid == session.uid
        )
        return status_cost(session) + extra

    def namespace_spent(self, namespace: str) -> float:
        """What the namespace has spent this month (the ledger); without one, what its
        existing sessions have cost."""
        if self.spend is not None:
            return self.spend.spent(namespace)
        return sum(
            self.session_spent(view)
            for (ns, _), view in list(self.directory.sessions.items())
            if ns == namespace
        )

    def prompt_estimate(self, session: SessionView) -> float:
        """What the session's next call's input may cost: its last metered one's. An agent's
        conversation only grows from call to call, so this is rarely more than the call
        will pay (a subagent's shorter one, or one after the CLI compacted its context);
        a session's first call, and a call the other replica metered, count none."""
        return self._last_prompt_usd.get(session.uid, 0.0)

    def hold(self, session: SessionView, usd: float) -> None:
        """Reserve `usd` for a call in flight (see budgets.in_flight_budget)."""
        _shift(self._reserved, session.uid, usd)
        _shift(self._reserved_ns, session.namespace, usd)

    def release(self, session: SessionView, usd: float) -> None:
        _shift(self._reserved, session.uid, -usd)
        _shift(self._reserved_ns, session.namespace, -usd)

    def session_reserved(self, session: SessionView) -> float:
        return self._reserved.get(session.uid, 0.0)

    def namespace_reserved(self, namespace: str) -> float:
        return self._reserved_ns.get(namespace, 0.0)

    # --- status --------------------------------------------------------------------------

    async def run(self) -> None:
        """Write pending usage every interval, until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.flush()
                    if self.spend is not None:
                        await self.spend.sync()
                except Exception:  # never end the gateway over one round; usage is kept
                    log.exception("metering round failed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
            if self.spend is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.spend.sync())

    async def flush(self) -> None:
        for key in list(self._pending):
            await self._write(key)

    async def _write(self, key: Key) -> None:
        session = self.directory.sessions.get(key)
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if session is None or session.uid != pending.uid:
            return  # the session is gone: Prometheus has the count
        if self.kube is None:
            self._restore(key, pending)
            return
        patch = {
            "metadata": {"resourceVersion": session.resource_version},
            "status": {"modelUsage": merged_usage(session.model_usage, pending, _now())},
        }
        self._inflight[key] = pending
        try:
            updated = await self.kube.patch("AgentSession", key[0], key[1], patch, sub="status")
        except ApiError as error:
            self.metrics.status_writes.labels("conflict" if error.status == 409 else "error").inc()
            if error.status != 404:
                # 409: status moved on; the watch brings it, the next round adds again.
                self._restore(key, pending)
            return
        except CONNECTION_ERRORS:
            # Unknown whether it was written: add it again next round. At worst a call is
            # counted twice, which a budget survives; never is one lost.
            self.metrics.status_writes.labels("error").inc()
            self._restore(key, pending)
            return
        finally:
            self._inflight.pop(key, None)
        self.metrics.status_writes.labels("ok").inc()
        self.directory.on_session("MODIFIED", updated)

    def _restore(self, key: Key, pending: _Pending) -> None:
        """Put usage that was not written back in front of what arrived meanwhile."""
        newer = self._pending.get(key)
        if newer is not None and newer.uid == pending.uid:
            pending.requests += newer.requests
            pending.cost_usd += newer.cost_usd
            for model, usage in newer.models.items():
                pending.models.setdefault(model, TokenUsage()).add(usage)
                pending.model_costs[model] = (
                    pending.model_costs.get(model, 0.0) + newer.model_costs[model]
                )
        self._pending[key] = pending

    # --- budgets -------------------------------------------------------------------------

    def note_budget(self, session: SessionView, reason: str, message: str) -> None:
        """Condition BudgetExceeded and a Warning Event, once per session and reason, in
        the background; again once the condition was cleared (a raised budget) and the
        note is BUDGET_NOTE_SECONDS old."""
        key = (session.uid, reason)
        if self.kube is None or key in self._budget_noted:
            return
        if _budget_condition_set(session.conditions, reason):
            return
        self._budget_noted[key] = True
        task = asyncio.create_task(self._note_budget(session, reason, message))
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _note_budget(self, session: SessionView, reason: str, message: str) -> None:
        assert self.kube is not None
        conditions, version = session.conditions, session.resource_version
        for attempt in range(BUDGET_WRITE_ATTEMPTS):
            if _budget_condition_set(conditions, reason):
                return  # another gateway replica set it, and posted its Event
            patch = {
                "metadata": {"resourceVersion": version},
                "status": {
                    "conditions": _with_budget_condition(conditions, reason, message, _now())
                },
            }
            try:
                await self.kube.patch(
                    "AgentSession", session.namespace, session.name, patch, "status"
                )
                break
            except ApiError as error:
                # Another writer (the operator's status, this proxy's usage) came between
                # the view and this write. The refused call may be the session's last: try
                # again on the version the watch brings rather than wait for another.
                newer = None
                if error.status == 409 and attempt + 1 < BUDGET_WRITE_ATTEMPTS:
                    newer = await self.directory.newer_view(
                        session, version, BUDGET_WATCH_WAIT_SECONDS
                    )
                if newer is None:
                    self._budget_not_set(session, reason, error)
                    return
                conditions, version = newer.conditions, newer.resource_version
            except CONNECTION_ERRORS as error:
                self._budget_not_set(session, reason, error)
                return
        target = EventTarget(session.namespace, session.name, session.uid)
        await self.directory.events.post(
            event_manifest(
                target,
                "BudgetExceeded",
                f"{reason}: {message}",
                GATEWAY_COMPONENT,
                warning=True,
                action="RefuseModelCall",
            )
        )

    def _budget_not_set(self, session: SessionView, reason: str, error: Exception) -> None:
        # The next refused call tries again (the watch brings the newer version).
        self._budget_noted.pop((session.uid, reason), None)
        log.warning(
            "could not set BudgetExceeded",
            extra={"session_name": session.name, "session_namespace": session.namespace,
                   "fields": {"error": str(error)[:200]}},
        )  # fmt: skip
