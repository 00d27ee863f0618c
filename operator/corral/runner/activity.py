"""Push activity reports to the operator (`corral.api.activity`): when the runner starts,
when a message starts or ends, when a WebSocket client connects or leaves, and as a
heartbeat while in use (an agent busy, a turn its CLI began itself under way, or a client
connected: `busy` in the report means "in use", so nobody's session is scaled down while
they are connected to it).

Pods hold no Kubernetes credentials, so the runner reports over HTTP to the operator,
which keeps idle deadlines in status. Reports are best effort: a failed push is logged
and retried with backoff (the next one sends fresh state); turns never wait for the
operator. Each carries the pod's token (CORRAL_ACTIVITY_TOKEN, set by the operator and kept
from the agent: corral.runner.own_credentials), and no time: the operator uses its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from corral.api import runtime
from corral.api.activity import (
    ACTIVITY_PATH,
    AUTHORIZATION_HEADER,
    BEARER,
    MAX_AGENTS,
    ActivityReport,
    AgentReport,
)
from corral.api.v1alpha1 import clamp_cost, clamp_turns
from corral.runner.agent import AgentSnapshot, AgentState
from corral.runner.jsonlog import log_event
from corral.runner.sdk import __version__ as SDK_VERSION
from corral.runner.session import RunnerSession
from corral.runner.status import agent_status, cli_version, next_durable_wakeup

log = logging.getLogger("corral.runner.activity")

HEARTBEAT_SECONDS = 30.0
PUSH_TIMEOUT_SECONDS = 5.0
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# A new pod's first report can be refused for a moment: NetworkPolicy agents that admit
# pods by their IPs in the API (kube-router) let a pod's traffic through only once the
# kubelet has published its status, which came up to 1.2 s after the runner's process
# started on the real node. Until a first report is delivered, retry sooner (doubling from
# this), and say so at info rather than warn, for this long.
FIRST_REPORT_RETRY_SECONDS = 0.05
FIRST_REPORT_QUIET_SECONDS = 10.0


@dataclass(frozen=True)
class Identity:
    namespace: str
    name: str
    pod_name: str
    # Proves to the operator that the report comes from this pod (None: not sent).
    token: str | None = None


def report_url(base: str) -> str:
    """The operator's endpoint: the variable may hold its base URL or the full one."""
    path = urlsplit(base).path
    return base if path.rstrip("/") else base.rstrip("/") + ACTIVITY_PATH


def identity_from_env(
    name: str | None, namespace: str | None, token: str | None
) -> Identity | None:
    """Who this runner is, from the pod's environment (hostname is the pod name); `token`
    was taken out of it at start (corral.runner.own_credentials)."""
    name = os.environ.get(runtime.ENV_SESSION_NAME) or name
    namespace = os.environ.get(runtime.ENV_SESSION_NAMESPACE) or namespace
    pod = os.environ.get(runtime.ENV_POD_NAME) or socket.gethostname()
    if not (name and namespace and pod):
        return None
    return Identity(namespace, name, pod, token)


def build_report(
    who: Identity, agents: Sequence[AgentSnapshot], connected: bool = False
) -> ActivityReport:
    """The report of `agents`, clamped to what the operator accepts (it refuses the rest);
    `connected`: a client holds a stream open, which counts as in use."""
    version = cli_version(agents)
    return ActivityReport(
        namespace=who.namespace,
        name=who.name,
        pod_name=who.pod_name,
        busy=connected or any(a.state == AgentState.BUSY or a.own_turn for a in agents),
        session_id=agents[0].session_id if len(agents) == 1 else None,
        num_turns=clamp_turns(sum(a.num_turns for a in agents)),
        total_cost_usd=clamp_cost(sum(a.total_cost_usd for a in agents)),
        sdk_version=SDK_VERSION[:64],
        cli_version=version[:64] if version else None,
        agents=[_agent_report(a) for a in agents[:MAX_AGENTS]],
        background_tasks=min(sum(a.background_tasks for a in agents), runtime.MAX_BACKGROUND_TASKS),
        scheduled_wakeups=min(
            sum(a.scheduled_wakeups for a in agents), runtime.MAX_SCHEDULED_WAKEUPS
        ),
        next_durable_wakeup=next_durable_wakeup(agents),
    )


def _agent_report(agent: AgentSnapshot) -> AgentReport:
    return AgentReport.model_validate(agent_status(agent).model_dump())


class ReportRefused(Exception):
    """The operator answered a report with an error status."""


class ReportLimited(ReportRefused):
    """429: too many reports; the latest state goes again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context for an https URL (loading CA certificates takes a while)."""
    return ssl.create_default_context()


def post_report(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    """POST one report (blocking; the reporter runs it in a thread). The standard library's
    client, not aiohttp's: that one's import builds TLS contexts, a tenth of a CPU-second
    of every runner's start, for a few small POSTs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=_tls())
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read(2000).decode(errors="replace")
        if response.status == 429:
            try:
                after = min(max(float(response.getheader("Retry-After") or 1), 0.1), 30.0)
            except ValueError:
                after = 1.0
            raise ReportLimited(f"429 {response.reason}: {text}", after)
        if response.status >= 300:
            raise ReportRefused(f"{response.status} {response.reason}: {text}")
    finally:
        conn.close()


def next_retry(retry: float, *, backoff: bool, delivered: bool) -> float:
    """The wait before the next try after a failed push (`backoff`: doubled, to at most
    RETRY_MAX_SECONDS), or the first wait of a later outage: from RETRY_FIRST_SECONDS once a
    report got through, from FIRST_REPORT_RETRY_SECONDS until then."""
    if backoff:
        return min(retry * 2, RETRY_MAX_SECONDS)
    return RETRY_FIRST_SECONDS if delivered else FIRST_REPORT_RETRY_SECONDS


class ActivityReporter:
    def __init__(
        self,
        session: RunnerSession,
        url: str,
        who: Identity,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._session = session
        self._url = report_url(url)
        self._who = who
        self._heartbeat = heartbeat
        # Pokes that arrive while a push is in flight collapse into one more push.
        self._wake = asyncio.Event()
        self._failing = False
        self._warned = False  # this outage was logged as a warning
        self._delivered = False  # a report got through since the runner started
        self._started = time.monotonic()
        self._retry_after: float | None = None  # the operator's, after a 429
        for worker in session.workers.values():
            worker.add_listener(self._wake.set)
        session.add_socket_listener(self._wake.set)

    async def run(self) -> None:
        self._wake.set()  # the first report says the runner is up
        retry = FIRST_REPORT_RETRY_SECONDS
        while True:
            busy = self._session.in_use()
            # A failed push is tried again with backoff: the operator must learn when a
            # turn ends, or it would keep an idle session awake.
            wait = retry if self._failing else (self._heartbeat if busy else None)
            if self._retry_after is not None:
                # Limited, not failing: the latest state goes when the operator said, and
                # nothing sooner (a poke meanwhile does not jump the wait).
                await asyncio.sleep(self._retry_after)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            await self.push()
            backoff = self._failing and self._retry_after is None
            retry = next_retry(retry, backoff=backoff, delivered=self._delivered)

    async def final(self) -> None:
        """One last report on the way out, so the operator does not think a message runs."""
        await self.push(limit=2)

    async def push(self, limit: float = PUSH_TIMEOUT_SECONDS) -> None:
        snapshots = [w.snapshot() for w in self._session.workers.values()]
        report = build_report(self._who, snapshots, connected=self._session.clients_in_use() > 0)
        body = report.model_dump_json(by_alias=True).encode()
        headers = {"content-type": "application/json"}
        if self._who.token:
            headers[AUTHORIZATION_HEADER] = BEARER + self._who.token
        try:
            await asyncio.wait_for(
                asyncio.to_thread(post_report, self._url, body, headers, limit), limit + 1
            )
        except ReportLimited as exc:
            self._retry_after = exc.retry_after
            self._failing = True
            return
        except (OSError, http.client.HTTPException, ReportRefused, TimeoutError) as exc:
            self._retry_after = None
            self._say_failed(exc)
            self._failing = True
            return
        if self._warned:
            log_event(log, "activity reports delivered again", url=self._url)
        elif self._failing and not self._delivered:
            log_event(log, "first activity report delivered", url=self._url)
        self._failing = self._warned = False
        self._delivered = True
        self._retry_after = None

    def _say_failed(self, error: Exception) -> None:
        """Once per outage, not on every retry; a new pod's first reports at info while
        its network may not admit it yet (FIRST_REPORT_QUIET_SECONDS)."""
        if self._warned:
            return
        starting = time.monotonic() - self._started < FIRST_REPORT_QUIET_SECONDS
        if not self._delivered and starting:
            if not self._failing:
                log_event(
                    log,
                    "first activity report not delivered yet; retrying",
                    url=self._url,
                    error=str(error)[:300],
                )
            return
        self._warned = True
        log_event(
            log,
            "activity report failed",
            level=logging.WARNING,
            url=self._url,
            error=str(error)[:300],
        )
