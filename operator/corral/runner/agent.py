"""One agent: a claude-agent-sdk client, its CLI process, and the message it is working on.

A single task owns the client (connect, query, disconnect) because the SDK ties a client
to the async context it was connected in; a second task reads the CLI's output for the
whole life of the process, so a CLI that dies while idle is noticed at once.
An agent works on one message at a time: `submit` refuses a second one (`AgentBusy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from corral.api import runtime
from corral.runner import events as ev
from corral.runner.durable_schedule import next_fire_time
from corral.runner.early_cli import SPAWN_OFFER, EarlyClis, Launch, SpawnOffer
from corral.runner.egress_gate import OPEN, EgressGate
from corral.runner.event_buffer import EventBuffer
from corral.runner.jsonlog import log_event
from corral.runner.layout import AgentPaths
from corral.runner.metrics import RunnerMetrics
from corral.runner.options import reload_key
from corral.runner.saved_session import BackgroundSaver, SavedSession
from corral.runner.sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    Message,
    ResultMessage,
    StreamEvent,
    SubprocessCLITransport,
    SystemMessage,
    UserMessage,
)

log = logging.getLogger("corral.runner.agent")

OptionsFactory = Callable[[str | None], ClaudeAgentOptions]
# How long `interrupt` waits for the CLI to acknowledge.
INTERRUPT_TIMEOUT = 10.0
# How long a CLI's end waits for the saved state to reach disk before restarting it.
SAVE_FLUSH_SECONDS = 10.0
RESTART_BACKOFF_MAX = 30.0
# What the CLI says when asked to resume a session it has no transcript for. Only this
# gives up a session: any other failure is retried, so a hiccup never drops history.
NO_CONVERSATION = "No conversation found"
# Events held while the CLI may still be on a turn of its own (see Turn.held); the oldest
# go first, and those are the other turn's.
HELD_EVENTS = 256
# Clients watching one agent's own turns at once, and what each may hold unread: a
# stalled one costs at most 16 x 1 MiB per agent (a message's reader may hold 8 MiB).
MAX_WATCHERS = 16
WATCHER_MAX_BYTES = 1024 * 1024


class AgentState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"
    ERROR = "error"
    STOPPED = "stopped"


class AgentBusy(Exception):
    """The agent is already working on a message."""


class AgentUnavailable(Exception):
    """The agent cannot take a message now (starting, restarting, stopping, failed)."""


class CliGone(Exception):
    """The CLI process ended or could not be started."""


@dataclass
class Turn:
    """One message and the events of its answer; the last event is always a `result`.

    `events` holds them for the one client that streams them (bounded: see EventBuffer);
    `result` keeps the result whether or not anyone reads the stream.
    """

    agent: str
    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.monotonic)
    events: EventBuffer = field(default_factory=EventBuffer)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: ev.Event | None = None
    # Where it is on its way to the CLI: an interrupt before `sending` ends it here; one
    # after it waits for `started_in_cli` (an interrupt sent earlier would stop whatever
    # the CLI is doing meanwhile, or be lost on an idle CLI).
    sending: bool = False
    interrupt_when_started: bool = False
    # The message goes to the CLI with this id, which the CLI echoes back when it begins
    # the message and names in what it answers with (see `begun_by`): only from then on
    # is its output this message's answer. Until then it may be finishing a turn it began
    # itself (a background task's notification, say), whose output (but its `system
    # init`) is held in `held` and dropped when that turn's result comes. A slash command
    # is echoed after its output, or not at all, which `held` keeps for it.
    cli_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_in_cli: bool = False
    held: deque[ev.Event] = field(default_factory=lambda: deque(maxlen=HELD_EVENTS))

    def publish(self, event: ev.Event) -> None:
        self.events.put(self._tag(event))

    def begun_by(self, message: Message) -> bool:
        """Whether `message` shows the CLI at work on this message: its echo, or output
        that names it (`user_message_uuid(s)`: what a turn took in, on its assistant
        messages, stream events and result; a slash command the CLI refuses is answered
        without an echo)."""
        if isinstance(message, UserMessage):
            return message.uuid == self.cli_uuid
        if isinstance(message, AssistantMessage | StreamEvent | ResultMessage):
            named = message.user_message_uuids or []
            return self.cli_uuid == message.user_message_uuid or self.cli_uuid in named
        return False

    def finish(self, result: ev.Event) -> None:
        self.publish(result)
        self.result = self._tag(result)
        self.done.set()

    async def next_event(self, wait: float) -> ev.Event | None:
        """The next event, or None when nothing came within `wait` seconds."""
        event = await self.events.get(wait)
        return None if event is None else self._tag(event)

    def _tag(self, event: ev.Event) -> ev.Event:
        return {**event, "agent": self.agent, "turn": self.id}


@dataclass(frozen=True)
class AgentSnapshot:
    name: str
    state: AgentState
    session_id: str | None
    num_turns: int
    messages: int
    total_cost_usd: float
    usage: dict[str, int]
    last_activity: datetime | None
    last_error: dict[str, Any] | None
    restarts: int
    cli_version: str | None
    # A turn the CLI began itself is under way (see AgentWorker.own_turn).
    own_turn: bool = False
    # See AgentWorker.background_tasks and scheduled_wakeups.
    background_tasks: int = 0
    scheduled_wakeups: int = 0
    # See AgentWorker.next_durable_wakeup.
    next_durable_wakeup: datetime | None = None


class AgentWorker:
    def __init__(
        self,
        paths: AgentPaths,
        options: OptionsFactory,
        metrics: RunnerMetrics,
        *,
        saved: SavedSession,
        persist: bool,
        restart: bool,
        refresh: Callable[[], Awaitable[object]] | None = None,
        fields: Mapping[str, Any] | None = None,
        early_clis: EarlyClis | None = None,
        egress_gate: EgressGate = OPEN,
        start_before_gate: bool = False,
    ) -> None:
        self.name = paths.name
        self.paths = paths
        self._options = options
        self._metrics = metrics
        self._saved = saved
        # Hybrid keeps the session id and totals on its volume; the others start afresh.
        self._saver = BackgroundSaver(paths.saved_file) if persist else None
        # LongRunning/Hybrid/Shared bring a crashed CLI back; Ephemeral fails instead.
        self._restart = restart
        self._log_fields = dict(fields or {})
        # Re-reads the session spec before each message (None: the spec never changes).
        self._refresh = refresh
        self._connected_key: tuple[object, ...] | None = None
        # A message taken from the inbox and held while the CLI restarts with new options.
        self._pending: Turn | None = None
        self.state = AgentState.STARTING
        self.restarts = 0
        self.last_activity: datetime | None = None
        self.last_error: dict[str, Any] | None = None
        self.cli_version: str | None = None
        self.ready = asyncio.Event()
        # Set once the first CLI process was started (or failed to start).
        self.spawned = asyncio.Event()
        self._client: ClaudeSDKClient | None = None
        self._current: Turn | None = None
        self._inbox: asyncio.Queue[Turn] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._clean_exit = False
        self._listeners: list[Callable[[], None]] = []
        # A result's total_cost_usd is cumulative: for the CLI process, plus what a resumed
        # CLI restored from its last clean exit. Costs are the differences.
        self._cli_cost_base = 0.0
        # Where this agent's CLI launches are recorded, and the one started from the
        # last record, offered to the first start (corral.runner.early_cli).
        self._early_clis = early_clis
        self._early_taken = early_clis is None
        self._egress_gate = egress_gate
        # The first CLI may start before the gate opens (nothing left behind for it to run).
        self._start_before_gate = start_before_gate
        self._launched: Launch | None = None  # how the SDK started the running CLI
        # An interrupt held until the CLI began its message (see _interrupt_started): its
        # task, referenced until it ends.
        self._interrupting: asyncio.Future[None] | None = None
        # From the `system init` of a turn the CLI began itself (no message of ours under
        # way) to a result: the agent is at work though nobody asked, so the session is in
        # use (a Hybrid session does not sleep under it). Not busy: a message may be sent.
        self.own_turn = False
        # Background tasks the agent started (a build, a test run) that still run, as the
        # CLI last listed them: reported, so that a Hybrid session waits longer before it
        # sleeps (stopping the pod ends them).
        self.background_tasks = 0
        # Wakeups the agent scheduled in its CLI (ScheduleWakeup, CronCreate: the CLI's
        # session crons, as its Stop hook last listed them) that have not fired yet. They
        # live in the CLI process only: reported, so that a Hybrid session waits as for
        # background tasks before it sleeps (stopping the pod drops them).
        self.scheduled_wakeups = 0
        # When a durable task of the agent (`CronCreate` with `durable: true`, kept in its
        # working directory) fires next: unlike session crons these outlive the CLI, but
        # only a CLI running at their minute runs them, so a sleeping session is woken for
        # them. Read again at each start and at the end of each turn.
        self.next_durable_wakeup: datetime | None = None
        # Clients that asked for the events of the turns the CLI begins itself (see
        # `watch`), and the id those events carry while one runs.
        self._watchers: set[EventBuffer] = set()
        self._own_turn_id: str | None = None

    # --- what other tasks call -----------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (synchronously) whenever a message starts or ends."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def in_use(self) -> bool:
        return self.busy or self.own_turn

    @property
    def watchers_full(self) -> bool:
        return len(self._watchers) >= MAX_WATCHERS

    def watch(self) -> EventBuffer:
        """The events of the turns the CLI begins itself (a background task's notification,
        say), from now on until `unwatch`; each carries `ownTurn: true` and a `turn` id of
        its own. Nobody else reads them: without a watcher they are only in the
        transcript."""
        if self.watchers_full:
            raise AgentUnavailable(
                f"agent {self.name!r} has {MAX_WATCHERS} watchers already; close one"
            )
        events = EventBuffer(max_bytes=WATCHER_MAX_BYTES)
        self._watchers.add(events)
        return events

    def unwatch(self, events: EventBuffer) -> None:
        self._watchers.discard(events)
        events.close()

    def submit(self, text: str, *, watched: bool = True) -> Turn:
        """Start `text` as the agent's next message. `watched=False`: nobody will read its
        event stream (only its result), so none is kept."""
        if self._stop.is_set():
            raise AgentUnavailable(f"agent {self.name!r} is shutting down")
        if self._current is not None:
            raise AgentBusy(
                f"agent {self.name!r} is busy with message {self._current.id}; send again "
                "after its result, or POST /v1/interrupt"
            )
        if self.state != AgentState.IDLE:
            raise AgentUnavailable(f"agent {self.name!r} is {self.state}")
        turn = Turn(self.name, text, events=EventBuffer(watched=watched))
        self._current = turn
        self.state = AgentState.BUSY
        self._metrics.busy.labels(self.name).set(1)
        self._touch()
        self._inbox.put_nowait(turn)
        self._notify()
        log_event(log, "message accepted", agent=self.name, turn=turn.id, chars=len(text))
        return turn

    async def interrupt(self) -> bool:
        """Ask the CLI to stop the running message; False when there is none."""
        client, turn = self._client, self._current
        if turn is not None and (turn is self._pending or not turn.sending):
            # Queued, or held while the CLI restarts with new options: it never reaches the
            # CLI (an interrupt sent to an idle CLI would be lost, and the message run).
            if turn is self._pending:
                self._pending = None
            reason = "interrupted before it was sent to the CLI"
            result = ev.synthetic_result("error_interrupted", reason, self._saved.session_id)
            self._end_turn(turn, result)
            return True
        if turn is not None and not turn.started_in_cli:
            turn.interrupt_when_started = True  # the CLI must be on this message first
            return True
        if turn is None and self.own_turn and client is not None:
            # Nobody's message, but the agent is at work: stop that (a client asks to stop
            # what the agent is doing).
            log_event(log, "interrupting the CLI's own turn", agent=self.name)
            await asyncio.wait_for(client.interrupt(), INTERRUPT_TIMEOUT)
            return True
        if client is None or turn is None:
            return False
        log_event(log, "interrupting", agent=self.name, turn=turn.id)
        await asyncio.wait_for(client.interrupt(), INTERRUPT_TIMEOUT)
        return True

    async def stop(self, drain: float) -> None:
        """Let a running message finish for up to `drain` seconds, then interrupt it."""
        if self.background_tasks or self.scheduled_wakeups:
            log_event(
                log,
                "stopping with background tasks running or wakeups scheduled; they end "
                "with the CLI",
                level=logging.WARNING,
                agent=self.name,
                running=self.background_tasks,
                scheduled=self.scheduled_wakeups,
            )
        turn = self._current
        if turn is not None and drain > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn.done.wait(), drain)
        turn = self._current
        if turn is not None:
            with contextlib.suppress(Exception):
                await self.interrupt()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn.done.wait(), INTERRUPT_TIMEOUT)
        self._stop.set()

    def snapshot(self) -> AgentSnapshot:
        s = self._saved
        return AgentSnapshot(
            name=self.name,
            state=self.state,
            session_id=s.session_id,
            num_turns=s.num_turns,
            messages=s.messages,
            total_cost_usd=s.total_cost_usd,
            usage=dict(s.usage),
            last_activity=self.last_activity,
            last_error=self.last_error,
            restarts=self.restarts,
            cli_version=self.cli_version,
            own_turn=self.own_turn,
            background_tasks=self.background_tasks,
            scheduled_wakeups=self.scheduled_wakeups,
            next_durable_wakeup=self.next_durable_wakeup,
        )

    # --- the owning task -----------------------------------------------------------------

    async def run(self) -> None:
        """Keep a CLI running until `stop`; returns early only when restart is off."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                await self._serve_one_cli()
                backoff = 1.0
            except CliGone as exc:
                self._fail_current("error_cli_crashed", str(exc))
                self.last_error = _error(None, "cli_crashed", str(exc))
                log_event(log, "CLI ended", level=logging.ERROR, agent=self.name, error=str(exc))
                if not self._restart:
                    self.state = AgentState.ERROR
                    self.ready.set()  # unblock anyone waiting: the agent will not start
                    return
                self.restarts += 1
                self._metrics.cli_restarts.labels(self.name).inc()
                self.state = AgentState.RESTARTING
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
        # Every message gets its result: one that outlasted the interrupt at shutdown, or
        # one held for a CLI restart that never came.
        self._pending = None
        self._fail_current("error_runner_stopped", "the runner stopped before the message ended")
        self.state = AgentState.STOPPED

    def _hooked(self, options: ClaudeAgentOptions) -> ClaudeAgentOptions:
        """`options` with the runner's own hooks added (the spec sets none): Stop, which
        lists the scheduled wakeups at the end of each turn."""
        hooks = dict(options.hooks or {})
        hooks["Stop"] = [*hooks.get("Stop", []), HookMatcher(hooks=[self._on_stop])]
        return dataclasses.replace(options, hooks=hooks)

    async def _on_stop(
        self, data: HookInput, tool_use_id: str | None, context: HookContext
    ) -> HookJSONOutput:
        self._set_scheduled_wakeups(pending_wakeups(dict(data)))
        await self._read_durable_schedule()
        return {}

    async def _connect(self) -> ClaudeSDKClient:
        resume = self._saved.session_id
        options = self._hooked(self._options(resume))
        self._connected_key = reload_key(options)
        try:
            client = await self._start_client(options)
            self._cli_cost_base = self._saved.cli_cost if resume else 0.0
            return client
        except Exception as exc:
            if resume is None or NO_CONVERSATION not in str(exc):
                raise CliGone(f"CLI did not start: {exc}") from exc
            # A session id whose transcript is gone must not wedge the agent for ever.
            self.last_error = _error(None, "resume_failed", str(exc)[:500])
            log_event(
                log,
                "resume failed, starting a new session",
                level=logging.WARNING,
                agent=self.name,
                session_id=resume,
                error=str(exc)[:500],
            )
        self._saved.session_id = None
        self._saved.cli_cost = self._cli_cost_base = 0.0
        options = self._hooked(self._options(None))
        self._connected_key = reload_key(options)
        try:
            return await self._start_client(options)
        except Exception as exc:
            raise CliGone(f"CLI did not start: {exc}") from exc

    async def _start_client(self, options: ClaudeAgentOptions) -> ClaudeSDKClient:
        """Start the CLI process, then let a client do the initialize handshake with it.
        `spawned` is set in between: the runner sets up its HTTP server while the CLI boots.
        (The SDK would make the same transport itself; session stores, which it skips for
        a transport given to it, are not used here.)"""
        # No CLI starts before the pod's NetworkPolicy filters its egress: a CLI runs
        # what the agent left on the volume (hooks, MCP servers) as it starts. Unless
        # nothing was left (the first start of a new pod): then only messages wait.
        if self._start_before_gate and not self._egress_gate.is_open():
            log_event(
                log,
                "CLI started before the egress gate opened: nothing was left behind for it "
                "to run; messages wait for the gate",
                agent=self.name,
            )
        else:
            await self._egress_gate.opened()
        self._start_before_gate = False  # the first start only
        transport = SubprocessCLITransport(prompt=_no_input(), options=options)
        early = None
        if not self._early_taken and self._early_clis is not None:
            self._early_taken = True  # offered to the first start only
            early = self._early_clis.take(self.name)
        offer = SpawnOffer(self.name, early, self._early_clis)
        token = SPAWN_OFFER.set(offer)
        try:
            await transport.connect()
        finally:
            SPAWN_OFFER.reset(token)
            self._launched = offer.launch
            if offer.early is not None:  # the SDK failed before it came to spawn
                offer.early.kill()
            self.spawned.set()
        if early is not None:
            log_event(
                log,
                "CLI started early, from the last start's record"
                if offer.adopted
                else "CLI started early was not what the spec asks for now: started anew",
                agent=self.name,
                early_pid=early.process.pid,
            )
        client = ClaudeSDKClient(options, transport=transport)
        await client.connect()
        return client

    async def _send(self, client: ClaudeSDKClient, turn: Turn) -> None:
        # What the agent does begins with a message: none before the egress is filtered.
        await self._egress_gate.opened()
        turn.sending = True
        try:
            await client.query(_as_input(turn))
        except Exception as exc:  # the CLI's stdin is gone: it died meanwhile
            raise CliGone(f"cannot send to the CLI: {exc}") from exc

    async def _interrupt_started(self, turn: Turn) -> None:
        """The interrupt asked for before the CLI began `turn`, now that it has."""
        client = self._client
        if client is None or turn.done.is_set():
            return
        log_event(log, "interrupting", agent=self.name, turn=turn.id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.interrupt(), INTERRUPT_TIMEOUT)

    async def _options_changed(self) -> bool:
        """Re-read the session spec; True when this agent's CLI options differ from the
        ones its CLI was started with."""
        if self._refresh is None:
            return False
        try:
            await self._refresh()
        except Exception as exc:  # never let a spec problem fail a message
            log_event(log, "cannot re-read the spec", level=logging.WARNING, error=str(exc))
            return False
        return reload_key(self._options(self._saved.session_id)) != self._connected_key

    async def _serve_one_cli(self) -> None:
        self._clean_exit = False
        client = await self._connect()
        self._client = client
        reader = asyncio.create_task(self._read(client), name=f"read-{self.name}")
        stopping = asyncio.create_task(self._stop.wait())
        try:
            self.state = AgentState.BUSY if self._current else AgentState.IDLE
            await self._read_durable_schedule()
            self.ready.set()
            log_event(
                log,
                "agent ready",
                agent=self.name,
                session_id=self._saved.session_id,
                # Start-up cost as the pod sees it (benchmarks read it from the log).
                process_age_seconds=process_age(),
            )
            pending, self._pending = self._pending, None
            if pending is not None and not pending.done.is_set():
                await self._send(client, pending)
            while True:
                getting = asyncio.create_task(self._inbox.get())
                await asyncio.wait({getting, reader, stopping}, return_when="FIRST_COMPLETED")
                if not getting.done():
                    getting.cancel()
                elif getting.exception() is None:
                    turn = getting.result()
                    if turn.done.is_set():
                        continue  # failed while it waited (the CLI before this one died)
                    options_changed = await self._options_changed()
                    if turn.done.is_set():
                        continue  # interrupted while the spec was read
                    if options_changed:
                        # The spec changed since this CLI started: start one with the new
                        # options, resuming the same session, and send the message to it.
                        self._pending = turn
                        self._clean_exit = True
                        log_event(log, "restarting the CLI with new options", agent=self.name)
                        return
                    await self._send(client, turn)
                    continue
                if stopping.done():
                    self._clean_exit = True
                    return
                raise CliGone(reader.result() or "CLI output ended")
        finally:
            stopping.cancel()
            self._client = None
            self._set_own_turn(False)
            self._set_background_tasks(0)  # the CLI's tasks end with it
            self._set_scheduled_wakeups(0)  # and its session crons
            self._own_turn_id = None  # and so does a turn of its own that was running
            # Closing stdin lets the CLI flush its transcript and cost, and exit.
            with contextlib.suppress(Exception):
                await client.disconnect()
            if self._clean_exit:
                self._saved.cli_cost = self._cli_cost_base
                self._save()
            # Bounded: a save stuck on the agent's files must not keep the CLI from being
            # restarted (and its message from ending) for good.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush_saves(), SAVE_FLUSH_SECONDS)
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _read(self, client: ClaudeSDKClient) -> str | None:
        """Route CLI output until it ends; returns why it ended."""
        try:
            async for message in client.receive_messages():
                self._on_message(message)
        except Exception as exc:  # ProcessError, ResultError (after an error result), ...
            return f"{type(exc).__name__}: {exc}"[:2000]
        return None

    # --- CLI output ----------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        self._touch()
        self._note_session(message)
        for tool in ev.tool_names(message):
            self._metrics.tool(self.name, tool)
        if isinstance(message, SystemMessage) and message.subtype == "api_retry":
            self._note_api_retry(message.data)
        if isinstance(message, SystemMessage) and message.subtype == "background_tasks_changed":
            self._set_background_tasks(running_tasks(message.data))
        turn = self._current
        self._note_own_turn(turn, message)
        if turn is not None and not turn.started_in_cli and turn.begun_by(message):
            self._begin(turn)
        if turn is None or not turn.started_in_cli:
            self._before_turn(turn, message)
            return
        for event in ev.to_events(message):
            if isinstance(message, ResultMessage):
                self._finish(turn, message, event)
            else:
                turn.publish(event)

    def _note_own_turn(self, turn: Turn | None, message: Message) -> None:
        if isinstance(message, ResultMessage):
            self._set_own_turn(False)
        elif turn is None and isinstance(message, SystemMessage) and message.subtype == "init":
            self._set_own_turn(True)

    def _set_own_turn(self, running: bool) -> None:
        if self.own_turn != running:
            self.own_turn = running
            self._notify()

    def _begin(self, turn: Turn) -> None:
        """The CLI has begun `turn`: what it held is the answer's beginning."""
        turn.started_in_cli = True
        while turn.held:
            turn.publish(turn.held.popleft())
        if turn.interrupt_when_started:
            self._interrupting = asyncio.ensure_future(self._interrupt_started(turn))

    def _before_turn(self, turn: Turn | None, message: Message) -> None:
        """Output while no message of ours is under way in the CLI: a turn the CLI runs on
        its own (nobody asked; counted, never answered), or what comes before `turn`'s
        beginning is known."""
        if isinstance(message, ResultMessage):
            # What was held for `turn` was that turn's: its watchers get it now.
            own = list(turn.held) if turn is not None else []
            if turn is not None:
                turn.held.clear()
            self._publish_own([*own, *ev.to_events(message)])
            self._own_turn_id = None
            cost = self._account(message)
            self._save()
            log_event(
                log,
                "turn of the CLI's own ended",
                agent=self.name,
                subtype=message.subtype,
                num_turns=message.num_turns,
                cost_usd=round(cost, 6),
            )
        elif turn is not None and isinstance(message, SystemMessage) and message.subtype == "init":
            # It tells the session, model and CLI, not an answer: passed on at once (the
            # CLI begins a turn with it, well before the echo; a client waits less for its
            # first event; in a turn the CLI began itself it says the same).
            for event in ev.to_events(message):
                turn.publish(event)
        elif turn is not None:
            turn.held.extend(ev.to_events(message))
        elif self.own_turn:
            self._publish_own(ev.to_events(message))

    def _publish_own(self, events: list[ev.Event]) -> None:
        if not self._watchers or not events:
            return
        if self._own_turn_id is None:
            self._own_turn_id = "cli-" + uuid.uuid4().hex[:8]
        tags = {"agent": self.name, "turn": self._own_turn_id, "ownTurn": True}
        for watcher in self._watchers:
            for event in events:
                watcher.put({**event, **tags})

    def _note_session(self, message: Message) -> None:
        session_id: str | None = None
        if isinstance(message, SystemMessage) and message.subtype == "init":
            session_id = message.data.get("session_id")
            self.cli_version = message.data.get("claude_code_version") or self.cli_version
        elif isinstance(message, ResultMessage | StreamEvent):
            session_id = message.session_id
        if session_id and session_id != self._saved.session_id:
            self._saved.session_id = session_id
            log_event(log, "session id", agent=self.name, session_id=session_id)
            self._save()
            if self._saver is not None:
                self._record_next_launch()

    def _record_next_launch(self) -> None:
        """The next start resumes this session, which its command line names (`--resume`):
        the launch record is brought up to date now, or the next wake could not use it."""
        launched = self._launched
        if self._early_clis is None or launched is None:
            return
        try:
            options = self._options(self._saved.session_id)
            options = dataclasses.replace(options, cli_path=launched.argv[0])
            transport = SubprocessCLITransport(prompt=_no_input(), options=options)
            argv = tuple(transport._build_command())
        except Exception as exc:  # the record only saves time; never fail a turn for it
            log_event(log, "cannot record the next launch", agent=self.name, error=str(exc))
            return
        self._early_clis.remember(self.name, dataclasses.replace(launched, argv=argv))

    def _set_background_tasks(self, count: int) -> None:
        if count == self.background_tasks:
            return
        self.background_tasks = count
        self._metrics.background_tasks.labels(self.name).set(count)
        log_event(log, "background tasks changed", agent=self.name, running=count)
        self._notify()

    def _set_scheduled_wakeups(self, count: int) -> None:
        if count == self.scheduled_wakeups:
            return
        self.scheduled_wakeups = count
        self._metrics.scheduled_wakeups.labels(self.name).set(count)
        log_event(log, "scheduled wakeups changed", agent=self.name, scheduled=count)
        self._notify()

    async def _read_durable_schedule(self) -> None:
        # Off the event loop: the file is the agent's, and a thousand crons take a while.
        upcoming = await asyncio.to_thread(next_fire_time, self.paths.cwd, datetime.now(UTC))
        if upcoming == self.next_durable_wakeup:
            return
        self.next_durable_wakeup = upcoming
        log_event(
            log,
            "durable schedule changed",
            agent=self.name,
            next=upcoming.isoformat() if upcoming else None,
        )
        self._notify()

    def _note_api_retry(self, data: dict[str, Any]) -> None:
        status = data.get("error_status")
        self._metrics.api_retries.labels(self.name, str(status or "none")).inc()
        self.last_error = _error(status, "api_retry", str(data.get("error") or "unknown"))
        log_event(
            log,
            "model API error, CLI retries",
            level=logging.WARNING,
            agent=self.name,
            status=status,
            attempt=data.get("attempt"),
            max_retries=data.get("max_retries"),
        )

    def _account(self, message: ResultMessage) -> float:
        """Adds a result's turns, tokens and cost to the agent's totals; returns the cost."""
        reported = message.total_cost_usd or 0.0
        if reported < self._cli_cost_base:
            self._cli_cost_base = 0.0  # the CLI restored less than expected: it counts anew
        cost = reported - self._cli_cost_base
        self._cli_cost_base = reported
        s = self._saved
        s.num_turns += message.num_turns
        s.total_cost_usd += cost
        for key, value in ev.usage_counts(message.usage).items():
            s.usage[key] = s.usage.get(key, 0) + value
            self._metrics.tokens.labels(self.name, ev.token_kind(key)).inc(value)
        self._metrics.turns.labels(self.name).inc(message.num_turns)
        self._metrics.cost.labels(self.name).inc(cost)
        return cost

    def _finish(self, turn: Turn, message: ResultMessage, event: ev.Event) -> None:
        cost = self._account(message)
        s = self._saved
        s.messages += 1
        self._metrics.messages.labels(self.name, message.subtype).inc()
        self._metrics.turn_duration.labels(self.name).observe(time.monotonic() - turn.started)
        if message.is_error:
            self.last_error = _error(
                message.api_error_status, message.subtype, (message.result or "")[:500]
            )
        self._save()
        self._end_turn(turn, {**event, "cost_usd": cost, "total_cost_usd": s.total_cost_usd})
        log_event(
            log,
            "message finished",
            agent=self.name,
            turn=turn.id,
            subtype=message.subtype,
            is_error=message.is_error,
            num_turns=message.num_turns,
            cost_usd=round(cost, 6),
        )

    def _fail_current(self, subtype: str, reason: str) -> None:
        turn = self._current
        if turn is not None:
            turn.publish({"type": "error", "message": reason})
            self._end_turn(turn, ev.synthetic_result(subtype, reason, self._saved.session_id))

    def _end_turn(self, turn: Turn, result: ev.Event) -> None:
        self._current = None
        if self.state == AgentState.BUSY:
            self.state = AgentState.IDLE
        self._metrics.busy.labels(self.name).set(0)
        turn.finish(result)
        self._notify()

    def _save(self) -> None:
        if self._saver is not None:
            self._saver.request(self._saved)

    async def flush_saves(self) -> None:
        """Until the saved state written so far is on disk."""
        if self._saver is not None:
            await self._saver.flush()

    def _touch(self) -> None:
        self.last_activity = datetime.now(UTC)


def pending_wakeups(data: dict[str, Any]) -> int:
    """How many session crons a Stop hook's input lists (the CLI's whole list of those not
    yet fired), bounded: it is the agent's process that says so."""
    crons = data.get("session_crons")
    return min(len(crons), runtime.MAX_SCHEDULED_WAKEUPS) if isinstance(crons, list) else 0


def running_tasks(data: dict[str, Any]) -> int:
    """How many tasks a `background_tasks_changed` message lists (the CLI's whole list of
    running ones each time), bounded: it is the agent's process that says so."""
    tasks = data.get("tasks")
    return min(len(tasks), runtime.MAX_BACKGROUND_TASKS) if isinstance(tasks, list) else 0


def process_age() -> float | None:
    """Seconds since this process started, to 10 ms (Linux /proc; None elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22, `starttime`
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - started, 3)


async def _as_input(turn: Turn) -> AsyncIterator[dict[str, Any]]:
    """`turn` as the CLI's input: a user message with the id the CLI echoes back."""
    yield {
        "type": "user",
        "uuid": turn.cli_uuid,
        "message": {"role": "user", "content": turn.text},
        "parent_tool_use_id": None,
    }


async def _no_input() -> AsyncIterator[dict[str, Any]]:
    """The transport's input stream: messages go through `query`, never through this."""
    return
    yield {}


def _error(status: int | None, kind: str, message: str) -> dict[str, Any]:
    return {
        "status": status,
        "kind": kind,
        "message": message,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
