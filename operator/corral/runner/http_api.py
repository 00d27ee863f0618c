"""The runner's HTTP API on its one port: probes, status, messages (SSE and WebSocket),
interrupt, transcript, Shared conversations and Prometheus metrics.

A message sent to an agent that is already working gets 409 Conflict (no queue): the
caller sees at once that its text was not taken, and can retry or interrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.api import runtime, validation
from corral.runner import sse
from corral.runner.agent import MAX_WATCHERS, AgentBusy, AgentUnavailable, AgentWorker, Turn
from corral.runner.conversation import (
    ConversationRequest,
    check_idle,
    converse,
    speaking_order,
)
from corral.runner.events import Event
from corral.runner.metrics import RunnerMetrics
from corral.runner.session import RunnerSession, UnknownAgent
from corral.runner.transcript import TranscriptPage, read_transcript, transcript_path
from corral.runner.web import WSMsgType, web
from corral.stalled_reader import send_or_cut

DEFAULT_MAX_REQUEST_BYTES = runtime.RUNNER_MAX_REQUEST_BYTES
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
# Answered to anyone: the kubelet's probes and Prometheus (no secrets, and the session's
# NetworkPolicy decides who reaches the port at all).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
LOOPBACK = frozenset({"127.0.0.1", "::1"})
TRANSCRIPT_DEFAULT_LIMIT = 200
TRANSCRIPT_MAX_LIMIT = 5000
TRANSCRIPT_CONCURRENT_READS = 2
# `/readyz?wait=S` holds a probe at most this long while the agents start (the pod's
# readiness probe asks for runtime.READY_HOLD_SECONDS).
READY_HOLD_MAX_SECONDS = 60.0


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1)
    agent: str | None = None
    # false: wait and answer with the result event as plain JSON.
    stream: bool = True


class InterruptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response({"error": str(self), **self.extra}, status=self.status)


def transcript_limit(raw: str | None) -> int:
    """`?limit=`: how many entries, 1..TRANSCRIPT_MAX_LIMIT (default 200)."""
    if raw is None:
        return TRANSCRIPT_DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= TRANSCRIPT_MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {TRANSCRIPT_MAX_LIMIT}")
    return limit


def ready_hold(raw: str | None) -> float:
    """`/readyz?wait=`: seconds to hold the answer while the agents start (default 0)."""
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= READY_HOLD_MAX_SECONDS:
        raise ApiError(400, f"wait must be seconds from 0 to {READY_HOLD_MAX_SECONDS:g}")
    return seconds


def _from_loopback(request: web.Request) -> bool:
    """The pod's own processes: exactly 127.0.0.1 or ::1 (IPv4-mapped too), not all of
    127.0.0.0/8, from which a service mesh's sidecar forwards every outside caller."""
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address) in LOOPBACK


class RunnerApi:
    def __init__(
        self,
        session: RunnerSession,
        metrics: RunnerMetrics,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
        gateway_credential: str | None = None,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        # Each transcript read holds up to transcript.MAX_ANSWER_BYTES; two at once will do.
        self._transcript_reads = asyncio.Semaphore(TRANSCRIPT_CONCURRENT_READS)
        self.gateway_credential = gateway_credential
        # Set once /readyz answered ready to a caller inside the pod: the kubelet's exec
        # startup probe (`corral.probe`) is the only one; its other probes come from the node.
        self.probed_ready = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_request_bytes, middlewares=[self._errors, self._callers]
        )
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/v1/status", self.status)
        r.add_post("/v1/messages", self.messages)
        r.add_get("/v1/stream", self.stream)
        r.add_post("/v1/interrupt", self.interrupt)
        r.add_get("/v1/transcript", self.transcript)
        r.add_post("/v1/conversation", self.conversation)
        r.add_get("/metrics", self.prometheus)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            return ApiError(413, f"request body over {self.max_request_bytes} bytes").response()

    @web.middleware
    async def _callers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With a gateway credential configured, only the gateway (or the pod itself, over
        loopback: its agents already hold everything in the pod) may use the API."""
        if self.gateway_credential is not None and request.path not in OPEN_PATHS:
            presented = request.headers.get(runtime.GATEWAY_CREDENTIAL_HEADER, "")
            if not (
                _from_loopback(request)
                or hmac.compare_digest(presented.encode(), self.gateway_credential.encode())
            ):
                raise ApiError(
                    401,
                    "this runner answers only the Corral gateway: talk to the session "
                    "through the gateway (docs/gateway.md)",
                )
        response: web.StreamResponse = await handler(request)
        return response

    # --- helpers -------------------------------------------------------------------------

    async def _body(self, request: web.Request, model: type[BaseModel]) -> Any:
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise ApiError(413, f"request body over {self.max_request_bytes} bytes")
        try:
            # A client that sends headers and then trickles (or never sends) its body
            # must not hold a handler for ever.
            raw = await asyncio.wait_for(request.read(), self.body_timeout)
        except TimeoutError:
            raise ApiError(
                408, f"request body not received within {self.body_timeout:g} s"
            ) from None
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            raise ApiError(
                400, "malformed request: " + validation.problems(exc, root="body")
            ) from None

    def _agent(self, name: str | None) -> AgentWorker:
        try:
            return self.session.agent(name)
        except UnknownAgent as exc:
            raise ApiError(404, str(exc.args[0])) from None

    def _submit(self, worker: AgentWorker, text: str, *, watched: bool = True) -> Turn:
        if self.session.stopping:
            raise ApiError(503, "runner is shutting down")
        try:
            return worker.submit(text, watched=watched)
        except AgentBusy as exc:
            raise ApiError(409, str(exc), agent=worker.name) from None
        except AgentUnavailable as exc:
            raise ApiError(503, str(exc), agent=worker.name) from None

    async def _interrupt(self, worker: AgentWorker) -> bool:
        try:
            return await worker.interrupt()
        except TimeoutError:
            raise ApiError(
                504, "interrupt not acknowledged by the CLI in time", agent=worker.name
            ) from None
        except Exception as exc:
            raise ApiError(502, f"interrupt failed: {exc}", agent=worker.name) from None

    # --- probes and status ---------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        # The kubelet's first readiness probe comes as the container starts: held until
        # the agents are up, it turns the pod Ready at once instead of a period later.
        hold = ready_hold(request.query.get("wait"))
        if hold and self.session.starting():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.session.wait_started(), hold)
        ready, reason = self.session.readiness()
        if ready and request.remote in LOOPBACK:
            self.probed_ready.set()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.session.status())

    async def prometheus(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        response = web.Response(body=body)
        response.headers["content-type"] = content_type
        return response

    # --- messages ------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body: MessageRequest = await self._body(request, MessageRequest)
        turn = self._submit(self._agent(body.agent), body.text, watched=body.stream)
        if not body.stream:
            await turn.done.wait()
            return web.json_response(turn.result)
        response = await sse.open_stream(request)
        # A client that goes away does not stop the message; it runs to its result.
        with contextlib.suppress(ConnectionError):
            await sse.send_turn(request, response, turn)
            await response.write_eof()
        return response

    async def interrupt(self, request: web.Request) -> web.Response:
        body: InterruptRequest = await self._body(request, InterruptRequest)
        worker = self._agent(body.agent)
        interrupted = await self._interrupt(worker)
        return web.json_response({"agent": worker.name, "interrupted": interrupted})

    async def transcript(self, request: web.Request) -> web.Response:
        worker = self._agent(request.query.get("agent"))
        limit = transcript_limit(request.query.get("limit"))
        session_id = worker.snapshot().session_id
        page = TranscriptPage()
        if session_id:
            path = transcript_path(worker.paths.config_dir, worker.paths.cwd, session_id)
            async with self._transcript_reads:
                page = await asyncio.to_thread(read_transcript, path, limit)
        return web.json_response(
            {
                "agent": worker.name,
                "session_id": session_id,
                "messages": page.entries,
                "truncated": page.truncated,
            }
        )

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        body: ConversationRequest = await self._body(request, ConversationRequest)
        if self.session.stopping:
            raise ApiError(503, "runner is shutting down")
        if len(self.session.workers) < 2:
            raise ApiError(400, "a conversation needs at least two agents (pattern Shared)")
        try:
            order = speaking_order(list(self.session.workers), body.opener, body.order)
            check_idle(self.session, order)
        except UnknownAgent as exc:
            raise ApiError(404, str(exc.args[0])) from None
        except AgentBusy as exc:
            raise ApiError(409, str(exc)) from None
        response = await sse.open_stream(request)
        with contextlib.suppress(ConnectionError):
            async with contextlib.aclosing(converse(self.session, body, order)) as events:
                async for event in events:
                    frame = b": keepalive\n\n" if event is None else sse.frame(event)
                    await send_or_cut(request, response.write(frame))
            await response.write_eof()
        return response

    # --- WebSocket -----------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        """Send `{"type":"message","text":...}` or `{"type":"interrupt"}`; receive events."""
        ws = web.WebSocketResponse(max_msg_size=self.max_request_bytes, heartbeat=30)
        await ws.prepare(request)
        forwarders: set[asyncio.Task[None]] = set()
        # A connected client keeps the session in use (activity), between messages too.
        with self.session.client_socket() as client:
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        client.heard()
                        await self._ws_command(request, ws, msg.data, forwarders)
                    elif msg.type == WSMsgType.ERROR:
                        break
            finally:
                for task in forwarders:
                    task.cancel()
        return ws

    async def _ws_command(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        data: str,
        forwarders: set[asyncio.Task[None]],
    ) -> None:
        try:
            command = json.loads(data)
            if not isinstance(command, dict):
                raise ValueError("a command is a JSON object")
            kind = command.get("type", "message")
            agent = command.get("agent")
            if agent is not None and not isinstance(agent, str):
                raise ValueError("agent: a string, the agent's name")
            if kind == "interrupt":
                worker = self._agent(agent)
                done = await self._interrupt(worker)
                await ws.send_json(
                    {"type": "interrupted", "agent": worker.name, "interrupted": done}
                )
                return
            if kind == "watch":
                await self._ws_watch_agents(request, ws, agent, forwarders)
                return
            if kind != "message":
                raise ValueError(f"unknown command type {kind!r}; use message, interrupt or watch")
            body = MessageRequest.model_validate({k: v for k, v in command.items() if k != "type"})
            turn = self._submit(self._agent(body.agent), body.text)
        except ApiError as exc:
            await ws.send_json({"type": "error", "status": exc.status, "message": str(exc)})
            return
        except ValidationError as exc:
            await ws.send_json(
                {"type": "error", "status": 400, "message": validation.problems(exc, root="body")}
            )
            return
        except ValueError as exc:
            await ws.send_json({"type": "error", "status": 400, "message": str(exc)})
            return
        task = asyncio.create_task(self._ws_forward(request, ws, turn))
        forwarders.add(task)
        task.add_done_callback(forwarders.discard)

    async def _ws_watch_agents(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        agent: str | None,
        forwarders: set[asyncio.Task[None]],
    ) -> None:
        """`watch`: one agent's turns of its CLI's own (all agents' without a name) go to
        `ws` too, until it closes. All or none: an agent with no room refuses the command."""
        workers = [self._agent(agent)] if agent else list(self.session.workers.values())
        watching = {task.get_name() for task in forwarders}
        new = [w for w in workers if f"watch-{w.name}" not in watching]
        full = [w.name for w in new if w.watchers_full]
        if full:
            raise ApiError(503, f"agents with {MAX_WATCHERS} watchers already: {full}; close one")
        for worker in new:
            self._ws_watch(request, ws, worker, forwarders)
        await ws.send_json({"type": "watching", "agents": [w.name for w in workers]})

    def _ws_watch(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        worker: AgentWorker,
        forwarders: set[asyncio.Task[None]],
    ) -> None:
        """Forward the turns `worker`'s CLI begins itself to `ws` until it closes."""
        # Taken now, not in the task: a turn that begins before the task first runs is
        # still seen.
        events = worker.watch()

        async def forward() -> None:
            try:
                await self._ws_send(request, ws, sse.watched_events(events))
            finally:
                worker.unwatch(events)

        task = asyncio.create_task(forward(), name=f"watch-{worker.name}")
        forwarders.add(task)
        task.add_done_callback(forwarders.discard)

    async def _ws_forward(
        self, request: web.Request, ws: web.WebSocketResponse, turn: Turn
    ) -> None:
        try:
            await self._ws_send(request, ws, sse.turn_events(turn))
        finally:
            turn.events.close()

    @staticmethod
    async def _ws_send(
        request: web.Request, ws: web.WebSocketResponse, events: AsyncGenerator[Event | None, None]
    ) -> None:
        """Send `events` to `ws` until they end or it closes (None: a quiet interval)."""
        with contextlib.suppress(ConnectionError):
            async with contextlib.aclosing(events):
                async for event in events:
                    if ws.closed:
                        return
                    if event is not None:
                        await send_or_cut(request, ws.send_json(event))
