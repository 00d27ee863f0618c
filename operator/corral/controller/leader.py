"""Leader election on a coordination.k8s.io Lease, so two replicas never act at once.

kopf's peering only pauses operators; it holds no lock. Here the holder renews the Lease
every `renew_seconds`; a standby takes over once the record has not changed for
`lease_seconds` (measured on the standby's own clock, as client-go does, so clock skew
between replicas does not matter). Every write carries the resourceVersion it read, so two
standbys racing for an expired Lease cannot both win. A leader that cannot renew within
the lease stops acting before anyone else may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from corral.controller import metrics
from corral.kube.client import ApiError, KubeClient

log = logging.getLogger("corral.leader")
RELEASE_SECONDS = 3.0


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        lease_seconds: float = 10.0,
        renew_seconds: float = 2.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.leading = False
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renewed = 0.0
        self._attempt_started = 0.0

    def _renew_deadline(self) -> float:
        """How long a leader may go without a renewal before it stops acting.

        Fix: it used to be the full `lease_seconds`, counted from when the renewal's
        response arrived, and checked only after a request returned (which may take the
        client's 30 s timeout). A standby counts `lease_seconds` from when it first saw
        that renewal, so the old leader could still act after a takeover. Now the clock
        starts when the renewal was sent, each attempt is cut off at the deadline, and
        the deadline keeps one renew period of margin (client-go's renewDeadline).
        """
        return max(self.lease_seconds - self.renew_seconds, self.lease_seconds / 2)

    async def run(self) -> None:
        try:
            while True:
                self._attempt_started = time.monotonic()
                budget = (
                    self._last_renewed + self._renew_deadline() - self._attempt_started
                    if self.leading
                    else self.lease_seconds
                )
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                    # a cancellation that races the inner call's completion (shutdown hangs).
                    async with asyncio.timeout(budget):
                        await self._try_once()
                except (ApiError, OSError, TimeoutError, aiohttp.ClientError) as error:
                    # The API server is unreachable or answered badly (a dropped connection,
                    # an error page that is not JSON): try again next period. Anything else
                    # is a bug and ends the process non-zero (see controller.cli.supervise).
                    log.warning("lease %s/%s: %r", self.namespace, self.name, error)
                if self.leading and time.monotonic() - self._last_renewed >= self._renew_deadline():
                    self._step_down("could not renew the lease in time")
                pause = self.renew_seconds
                if self.leading:
                    # Never past the deadline: the next attempt, cut off there, steps down
                    # on time (sleeping a whole period after a slow failure would not).
                    left = self._last_renewed + self._renew_deadline() - time.monotonic()
                    pause = min(pause, max(left, 0.0))
                await asyncio.sleep(pause)
        finally:
            if self.leading:
                self._step_down("shutting down")
                # Best effort and brief: an API server that does not answer must not hold
                # up the shutdown (the standby then waits out the lease instead).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(RELEASE_SECONDS):
                        await self._release()

    def _lease_body(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try_once(self) -> None:
        try:
            lease = await self.client.get("Lease", self.namespace, self.name)
        except ApiError as error:
            if error.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._lease_body(0, None),
            }
            try:
                await self.client.create(body)
            except ApiError as conflict:
                if conflict.status == 409:
                    return
                raise
            self._became_leader()
            return
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = time.monotonic()
        holder = spec.get("holderIdentity")
        version = lease["metadata"]["resourceVersion"]
        if holder == self.identity:
            await self._write(
                version,
                self._lease_body(spec.get("leaseTransitions") or 0, spec.get("acquireTime")),
            )
            self._last_renewed = self._attempt_started
            if not self.leading:
                self._became_leader()
            return
        if self.leading:
            self._step_down(f"the lease is held by {holder}")
        expired = holder is None or time.monotonic() - self._observed_at > self.lease_seconds
        if not expired:
            return
        transitions = (spec.get("leaseTransitions") or 0) + 1
        try:
            await self._write(version, self._lease_body(transitions, None))
        except ApiError as error:
            if error.status == 409:
                return  # another standby won
            raise
        log.info("took over the lease from %s", holder)
        self._became_leader()

    async def _write(self, version: str, spec: dict[str, Any]) -> None:
        patch = {"metadata": {"resourceVersion": version}, "spec": spec}
        await self.client.patch("Lease", self.namespace, self.name, patch)

    async def _release(self) -> None:
        lease = await self.client.get("Lease", self.namespace, self.name)
        if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None},
            }
            await self.client.patch("Lease", self.namespace, self.name, patch)

    def _became_leader(self) -> None:
        self._last_renewed = self._attempt_started
        if self.leading:
            return
        self.leading = True
        metrics.LEADER.set(1)
        log.info("became leader as %s", self.identity)
        self.on_started()

    def _step_down(self, why: str) -> None:
        self.leading = False
        metrics.LEADER.set(0)
        log.warning("stopped leading: %s", why)
        self.on_stopped()
