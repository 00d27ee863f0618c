"""The runner process: agents for the session's pattern, the HTTP API, and shutdown.

Ephemeral runs `spec.prompt` once, writes the outcome to the termination log and exits.
LongRunning and Shared serve until SIGTERM. Hybrid does the same, resuming its saved SDK
session on start and finishing (or interrupting) the running message on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.api import runtime
from corral.api.v1alpha1 import AgentSessionSpec, Pattern, RunResult
from corral.runner import termination
from corral.runner.agent import AgentBusy, AgentUnavailable, AgentWorker
from corral.runner.early_cli import EarlyClis
from corral.runner.egress_gate import OPEN, EgressGate
from corral.runner.jsonlog import log_event, scrub_and_cut
from corral.runner.layout import AgentPaths, agent_paths, prepare
from corral.runner.metrics import RunnerMetrics
from corral.runner.options import build_options, find_agent
from corral.runner.own_credentials import OwnCredentials
from corral.runner.saved_session import SavedSession, load_saved
from corral.runner.sdk import ClaudeAgentOptions
from corral.runner.session import RunnerSession
from corral.runner.spec_source import SpecSource

if TYPE_CHECKING:
    from aiohttp import web

    from corral.runner.activity import ActivityReporter
    from corral.runner.http_api import RunnerApi
    from corral.testing.fake_anthropic import FakeAnthropic

log = logging.getLogger("corral.runner")

FAKE_ENV = "CORRAL_FAKE_ANTHROPIC"
# Exit codes: the run failed (an error result, a crashed CLI) / the runner could not start.
EXIT_RUN_FAILED = 1
EXIT_CONFIG = 2
# One CLI stderr line in the log, at most (the CLI can print whole request bodies).
STDERR_LINE_CHARS = 1000
# Activity reports begin when the agents are up, or after this long whatever their state.
REPORTS_WAIT_SECONDS = 30.0
# In a pod, how long a finished Ephemeral run may wait for the kubelet's startup probe to
# see it ready (the probe's period is 1 s; see Runner._let_startup_probe_finish).
STARTUP_PROBE_WAIT_SECONDS = 3.0
PROBE_EXIT_SECONDS = 0.2


@dataclass(frozen=True)
class RunnerSettings:
    spec: AgentSessionSpec
    workspace: Path
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = runtime.RUNNER_PORT
    termination_log: Path = Path(runtime.TERMINATION_LOG)
    drain_seconds: float = 20.0
    fake_anthropic: bool = False
    fake_anthropic_port: int = 0
    max_request_bytes: int = runtime.RUNNER_MAX_REQUEST_BYTES
    # The file `spec` came from, re-read between messages (None: never re-read).
    spec_file: Path | None = None
    # From a manifest's metadata; the pod's environment overrides them.
    session_name: str | None = None
    session_namespace: str | None = None
    # 0: not in a pod (no startup probe to wait for).
    startup_probe_wait_seconds: float = 0.0
    # Bound early by `corral runner` (corral.runner.listener); None: bind host:port here.
    listener: socket.socket | None = field(default=None, compare=False)
    # The CLIs `corral runner` started from the last start's record (corral.runner.early_cli).
    early_clis: EarlyClis | None = field(default=None, compare=False)
    # Every CLI start waits for it (corral.runner.egress_gate); started by `corral runner`.
    egress_gate: EgressGate = field(default=OPEN, compare=False)
    # Nothing was left behind for a CLI to run (egress_gate.nothing_left_behind): each
    # agent's first CLI may start before the gate opens; its messages wait for it.
    cli_before_gate: bool = False
    # Taken out of the environment by `corral runner` (corral.runner.own_credentials).
    credentials: OwnCredentials = field(default_factory=OwnCredentials, compare=False)
    # False: the agent's processes can read this one's /proc (logged as a warning).
    process_hidden: bool = True


def wants_fake(flag: bool) -> bool:
    """The fake API is used only when asked for and no real key is configured."""
    asked = flag or os.environ.get(FAKE_ENV, "") in ("1", "true", "yes")
    return asked and not os.environ.get(runtime.ENV_API_KEY)


def _stderr_logger(agent: str) -> Callable[[str], None]:
    def write(line: str) -> None:
        line = scrub_and_cut(line, STDERR_LINE_CHARS)
        log_event(log, "cli stderr", level=logging.WARNING, agent=agent, line=line)

    return write


def _worker(
    source: SpecSource,
    paths: AgentPaths,
    metrics: RunnerMetrics,
    cli_env: dict[str, str],
    early_clis: EarlyClis | None,
    egress_gate: EgressGate,
    cli_before_gate: bool,
) -> AgentWorker:
    pattern = source.spec.pattern
    hybrid = pattern == Pattern.HYBRID
    for blocker, aside in prepare(paths):
        log_event(
            log,
            "moved aside what was in the way of a directory of the runner",
            level=logging.WARNING,
            path=str(blocker),
            now=str(aside),
        )
    saved = load_saved(paths.saved_file) if hybrid else SavedSession()
    stderr = _stderr_logger(paths.name)

    def options(resume: str | None) -> ClaudeAgentOptions:
        # The spec as last read: a CLI (re)started later gets the values in force then.
        return build_options(source.spec, paths, resume=resume, env=cli_env, stderr=stderr)

    async def refresh() -> bool:
        return await asyncio.to_thread(source.refresh)

    return AgentWorker(
        paths,
        options,
        metrics,
        saved=saved,
        persist=hybrid,
        restart=pattern != Pattern.EPHEMERAL,
        refresh=refresh if source.path is not None else None,
        early_clis=early_clis,
        egress_gate=egress_gate,
        # A spec's MCP servers are connected to as the CLI starts: only after the gate.
        start_before_gate=cli_before_gate and not source.spec.mcp_servers,
    )


def opening_messages(spec: AgentSessionSpec, worker: AgentWorker, resumed: bool) -> list[str]:
    """What an agent is told when it starts: the session's prompt and the agent's own."""
    if resumed:
        return []  # a woken Hybrid session already had its prompt
    agent = find_agent(spec, worker.name)
    texts = [agent.prompt] if agent and agent.prompt else []
    # A Shared session's prompt goes to its first agent, after that agent's own.
    first = spec.agents[0].name if spec.agents else worker.name
    if spec.prompt and worker.name == first:
        texts.append(spec.prompt)
    return texts


class _Reports:
    """The activity reports' task, and its reporter once reports began."""

    def __init__(self) -> None:
        self.reporter: ActivityReporter | None = None
        self.task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.reporter is not None:
            await self.reporter.final()


class Runner:
    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.metrics = RunnerMetrics()
        self.fake_url: str | None = None
        self._stop = asyncio.Event()
        self._http: web.AppRunner | None = None
        self._api: RunnerApi | None = None

    async def run(self) -> int:
        cli_env: dict[str, str] = {}
        fake: FakeAnthropic | None = None
        if wants_fake(self.settings.fake_anthropic):
            # Test code is imported only when asked for.
            from corral.testing.fake_anthropic import FakeAnthropic

            fake = FakeAnthropic()
            self.fake_url = await fake.start("127.0.0.1", self.settings.fake_anthropic_port)
            cli_env = {runtime.ENV_BASE_URL: self.fake_url, runtime.ENV_API_KEY: "fake-key"}
            log_event(log, "using the in-process fake Anthropic API", url=self.fake_url)
        elif not os.environ.get(runtime.ENV_API_KEY):
            log_event(log, "no API key configured; model calls will fail", level=logging.WARNING)
        if not self.settings.process_hidden:
            log_event(
                log,
                "could not make the runner non-dumpable: the agent can read its credentials",
                level=logging.WARNING,
            )
        spec = self.settings.spec
        source = SpecSource(spec, self.settings.spec_file)
        workers = [
            _worker(
                source,
                paths,
                self.metrics,
                cli_env,
                self.settings.early_clis,
                self.settings.egress_gate,
                self.settings.cli_before_gate,
            )
            for paths in agent_paths(spec, self.settings.workspace, self.settings.state_dir)
        ]
        resumed = {w.name: w.snapshot().session_id is not None for w in workers}
        session = RunnerSession(
            str(spec.pattern),
            workers,
            fake_api=fake is not None,
            client_idle_seconds=source.client_idle_seconds,
        )
        session.add_socket_listener(lambda: self.metrics.clients.set(session.connected_clients))
        self._install_signals()
        reports = _Reports()
        gate_logged: asyncio.Task[None] | None = None
        try:
            # The CLIs first: they take the longest to start, and the HTTP server's
            # imports and set-up run while they boot (readiness waits for them anyway).
            session.start()
            await session.wait_spawned()
            self._discard_early_clis()
            # Open by now, unless the CLIs started before it (nothing left behind).
            gate_logged = asyncio.create_task(self._log_egress_gate(), name="egress-gate-log")
            await self._serve_http(session)
            reports.task = asyncio.create_task(
                self._report_activity(session, reports), name="activity"
            )
            log_event(
                log,
                "runner started",
                pattern=str(spec.pattern),
                port=self.settings.port,
                agents=list(session.workers),
                resumed=resumed,
            )
            if spec.pattern == Pattern.EPHEMERAL:
                return await self._run_ephemeral(session)
            openers = [
                asyncio.create_task(self._open(w, opening_messages(spec, w, resumed[w.name])))
                for w in workers
            ]
            await self._stop.wait()
            for task in openers:
                task.cancel()
            log_event(log, "stopping", drain_seconds=self.settings.drain_seconds)
            await session.shutdown(self.settings.drain_seconds)
            return 0
        finally:
            if gate_logged is not None:
                gate_logged.cancel()
            self._discard_early_clis()
            await reports.stop()
            if self._http is not None:
                await self._http.cleanup()
            if fake is not None:
                await fake.stop()
            log_event(log, "runner stopped")

    async def _report_activity(self, session: RunnerSession, out: _Reports) -> None:
        url = os.environ.get(runtime.ENV_ACTIVITY_URL)
        if not url:
            return
        # Reports begin once the agents are up: the reporter's models would otherwise load
        # while the CLIs boot, on the same CPU. The first report says so.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.wait_started(), REPORTS_WAIT_SECONDS)
        activity = await asyncio.to_thread(_load_activity)
        who = activity.identity_from_env(
            self.settings.session_name,
            self.settings.session_namespace,
            self.settings.credentials.activity_token,
        )
        if who is None:
            log_event(
                log,
                "activity URL set but session name/namespace unknown; not reporting",
                level=logging.WARNING,
            )
            return
        out.reporter = activity.ActivityReporter(session, url, who)
        await out.reporter.run()

    async def _log_egress_gate(self) -> None:
        await self.settings.egress_gate.opened()
        gate = self.settings.egress_gate.result
        if gate is None:
            return
        canary = self.settings.egress_gate.canary
        self.metrics.egress_gate_seconds.set(gate.waited)
        self.metrics.egress_gate_unconfirmed.set(0 if gate.filtered else 1)
        fields: dict[str, Any] = {
            "canary": f"{canary.host}:{canary.port}" if canary else None,
            "waited_seconds": round(gate.waited, 3),
            "answered_tries": gate.answered,
            "refused_tries": gate.refused,
            "unresolved_tries": gate.unresolved,
            "slowest_answer_seconds": round(gate.slowest_answer, 4),
        }
        if gate.error:
            fields["error"] = gate.error
        if gate.filtered:
            log_event(log, "egress filtered by the NetworkPolicy: CLIs may start", **fields)
        else:
            log_event(
                log,
                "egress gate: the canary still answered after its maximum wait, CLIs started "
                "anyway (a session egress rule that allows the canary, or a NetworkPolicy "
                "agent that has not synced this pod)",
                level=logging.WARNING,
                **fields,
            )

    def _discard_early_clis(self) -> None:
        """Kill what no agent took (an agent since removed from the spec), and log what
        happened to the record."""
        early = self.settings.early_clis
        if early is None:
            return
        if early.agents:
            log_event(log, "CLIs started early, from the last start's record", agents=early.agents)
            early.agents = []
        early.discard()
        for note in early.notes:
            log_event(log, note, level=logging.WARNING)
        early.notes.clear()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

    async def _serve_http(self, session: RunnerSession) -> None:
        from corral.runner.http_api import RunnerApi
        from corral.runner.web import web

        api = self._api = RunnerApi(
            session,
            self.metrics,
            self.settings.max_request_bytes,
            gateway_credential=self.settings.credentials.gateway_credential,
        )
        self._http = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await self._http.setup()
        listener = self.settings.listener
        if listener is not None:
            await web.SockSite(self._http, listener).start()
        else:
            await web.TCPSite(self._http, self.settings.host, self.settings.port).start()

    async def _open(self, worker: AgentWorker, texts: list[str]) -> None:
        await worker.ready.wait()
        for text in texts:
            try:
                turn = worker.submit(text, watched=False)
            except (AgentBusy, AgentUnavailable) as exc:
                log_event(
                    log,
                    "opening message not sent",
                    level=logging.WARNING,
                    agent=worker.name,
                    error=str(exc),
                )
                return
            await turn.done.wait()

    async def _run_ephemeral(self, session: RunnerSession) -> int:
        worker = session.first
        prompt = self.settings.spec.prompt or ""
        stop = asyncio.create_task(self._stop.wait())
        started = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({stop, started}, return_when="FIRST_COMPLETED")
        result = None
        failure: str | None = "terminated before the run started"
        if started.done() and not stop.done():
            try:
                turn = worker.submit(prompt, watched=False)
            except (AgentBusy, AgentUnavailable) as exc:
                failure = f"agent did not start: {worker.last_error or exc}"
            else:
                done = asyncio.create_task(turn.done.wait())
                await asyncio.wait({stop, done}, return_when="FIRST_COMPLETED")
                if done.done() and not stop.done():
                    await self._let_startup_probe_finish(stop)
                if not done.done():
                    # SIGTERM mid-run (activeDeadlineSeconds, deletion): stop cleanly.
                    await session.shutdown(0)
                    failure = "terminated during the run"
                result = turn.result
                failure = None if result else failure
        stop.cancel()
        started.cancel()
        outcome = termination.run_result(result, failure)
        is_error = bool(result.get("is_error")) if result else True
        self._write_outcome(outcome)
        await session.shutdown(0)
        ok = termination.succeeded(outcome, is_error)
        log_event(
            log,
            "run finished",
            subtype=outcome.subtype,
            ok=ok,
            num_turns=outcome.num_turns,
            total_cost_usd=outcome.total_cost_usd,
        )
        return 0 if ok else EXIT_RUN_FAILED

    async def _let_startup_probe_finish(self, stop: asyncio.Task[bool]) -> None:
        """A run shorter than the kubelet's startup probe period (1 s) would end before the
        probe's first tick: the kubelet then execs into an exited container and posts a
        Warning (`Unhealthy: ... no running task found`) for a run that went fine. So wait
        (bounded, and not past a SIGTERM) until the probe has seen the runner ready; a run
        that took longer has been probed already and does not wait."""
        api = self._api
        wait = self.settings.startup_probe_wait_seconds
        if api is None or wait <= 0 or api.probed_ready.is_set():
            return
        probed = asyncio.create_task(api.probed_ready.wait())
        await asyncio.wait({probed, stop}, timeout=wait, return_when="FIRST_COMPLETED")
        probed.cancel()
        if api.probed_ready.is_set():
            await asyncio.sleep(PROBE_EXIT_SECONDS)  # the probe's process ends before ours

    def _write_outcome(self, outcome: RunResult) -> None:
        try:
            termination.write_termination_log(self.settings.termination_log, outcome)
        except OSError as exc:
            log_event(
                log,
                "cannot write termination log",
                level=logging.ERROR,
                path=str(self.settings.termination_log),
                error=str(exc),
            )


def _load_activity() -> types.ModuleType:
    """The reporter's module (its models), imported off the event loop: a request that
    comes meanwhile does not wait for it."""
    from corral.runner import activity

    return activity


def run(settings: RunnerSettings) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(Runner(settings).run())
    return EXIT_RUN_FAILED
