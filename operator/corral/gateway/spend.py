"""What each namespace has spent on the model this month: a ledger in one ConfigMap of the
gateway's namespace, so that it outlives sessions (deleting them does not free budget),
gateway restarts and replicas.

Each key is a namespace; each value `{"period": "2026-12", "usd": 1.23}`. A replica adds
its new spend with a merge patch that carries the resourceVersion it read (409: read again
and add next round), so every cent is counted once. A value from an earlier month counts
as nothing: the budget starts again each calendar month (UTC).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from corral.kube.client import CONNECTION_ERRORS, ApiError, KubeClient

log = logging.getLogger("corral.gateway.spend")


def month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


def parse_ledger(data: dict[str, Any] | None, period: str) -> dict[str, float]:
    """This period's spend per namespace, from a ConfigMap's data (bad entries: nothing)."""
    spent: dict[str, float] = {}
    for namespace, raw in (data or {}).items():
        try:
            entry = json.loads(raw)
            usd = float(entry["usd"])
        except (ValueError, TypeError, KeyError):
            continue
        if entry.get("period") == period and usd >= 0:
            spent[namespace] = usd
    return spent


def entry(period: str, usd: float) -> str:
    return json.dumps({"period": period, "usd": round(usd, 6)}, sort_keys=True)


class NamespaceSpend:
    def __init__(
        self,
        kube: KubeClient | None,
        namespace: str,
        name: str,
        clock: Callable[[], str] = month,
        read_always: bool = True,
    ) -> None:
        # Without namespace budgets nobody needs other replicas' spend: read only to add.
        self.read_always = read_always
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.clock = clock
        self.recorded: dict[str, float] = {}  # the ledger as last read, this period
        self.pending: dict[str, float] = {}  # this replica's spend not in the ledger yet
        self._version = ""
        self._period = clock()

    def add(self, namespace: str, usd: float) -> None:
        if usd > 0:
            self.pending[namespace] = self.pending.get(namespace, 0.0) + usd

    def spent(self, namespace: str) -> float:
        return self.recorded.get(namespace, 0.0) + self.pending.get(namespace, 0.0)

    async def sync(self) -> None:
        """Read the ledger, and add this replica's pending spend to it."""
        if self.kube is None:
            return
        period = self.clock()
        if period != self._period:  # a new month: what was pending belongs to the old one
            self._period, self.pending = period, {}
        if not self.pending and not self.read_always:
            return
        body = await self._read()
        if body is None:
            return
        data = body.get("data") or {}
        self._version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        self.recorded = parse_ledger(data, period)
        if not self.pending:
            return
        adding = dict(self.pending)
        update = {ns: entry(period, self.recorded.get(ns, 0.0) + usd) for ns, usd in adding.items()}
        patch = {"metadata": {"resourceVersion": self._version}, "data": update}
        try:
            written = await self.kube.patch("ConfigMap", self.namespace, self.name, patch)
        except ApiError as error:
            log.info("namespace spend not written", extra={"fields": {"status": error.status}})
            return  # 409: another replica wrote first; add on the next round
        except CONNECTION_ERRORS as error:
            # Kept pending: if it was written after all, it is counted twice, never lost.
            log.info("namespace spend not written", extra={"fields": {"error": repr(error)}})
            return
        for ns, usd in adding.items():
            left = self.pending.get(ns, 0.0) - usd
            if left > 1e-12:
                self.pending[ns] = left
            else:
                self.pending.pop(ns, None)
        self._version = str(written.get("metadata", {}).get("resourceVersion", ""))
        self.recorded = parse_ledger(written.get("data"), period)

    async def _read(self) -> dict[str, Any] | None:
        assert self.kube is not None
        try:
            return await self.kube.get("ConfigMap", self.namespace, self.name)
        except CONNECTION_ERRORS as error:
            log.warning("cannot read namespace spend", extra={"fields": {"error": repr(error)}})
            return None
        except ApiError as error:
            if error.status != 404:
                log.warning(
                    "cannot read namespace spend", extra={"fields": {"status": error.status}}
                )
                return None
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "corral"},
            },
            "data": {},
        }
        try:
            return await self.kube.create(manifest)
        except ApiError as error:
            if error.status == 409:  # another replica made it meanwhile
                return await self.kube.get("ConfigMap", self.namespace, self.name)
            log.warning("cannot create namespace spend", extra={"fields": {"status": error.status}})
            return None
