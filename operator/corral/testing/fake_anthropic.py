"""A fake Anthropic Messages API, good enough for the Claude Code CLI to run real turns.

Control it in-process (`FakeAnthropic.add(...)`, `.requests`) or over HTTP
(`POST /_fake/script`, `GET /_fake/requests`, `POST /_fake/reset`) when the code under test
runs in another process or pod. Every request is recorded without its credentials.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from corral.testing import anthropic_wire as wire
from corral.testing.anthropic_script import ErrorStep, Script, Step, TextStep, ToolUseStep

DEFAULT_REPLY = TextStep(text="fake reply to: {last_user}")
# Headers that carry credentials are never recorded.
SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.time)
    # With a key expected (FakeAnthropic.expect_key): whether the request carried it.
    key_ok: bool | None = None


@dataclass
class _Pending:
    step: Step
    left: int


class FakeAnthropic:
    """Scripted fake of `api.anthropic.com`; thread-safe so tests may block while it serves."""

    def __init__(self, default: TextStep = DEFAULT_REPLY) -> None:
        self._lock = threading.Lock()
        self._script: list[_Pending] = []
        self._default = default
        self._requests: list[RecordedRequest] = []
        self._expected_key: str | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    # --- control -------------------------------------------------------------------------

    def add(self, *steps: Step) -> None:
        """Queue replies; each is taken by the next Messages request it matches."""
        with self._lock:
            self._script.extend(_Pending(step, step.times) for step in steps)

    def set_default(self, step: TextStep) -> None:
        """The reply given when no queued step matches."""
        with self._lock:
            self._default = step

    def expect_key(self, key: str | None) -> None:
        """Answer 401 (as the real API does) to requests without this x-api-key; None: any."""
        with self._lock:
            self._expected_key = key

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._default = DEFAULT_REPLY
            self._expected_key = None

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def message_bodies(self) -> list[dict[str, Any]]:
        """Bodies of every `POST /v1/messages` so far (count_tokens excluded)."""
        return [
            r.body
            for r in self.requests
            if r.path == "/v1/messages" and r.method == "POST" and isinstance(r.body, dict)
        ]

    def pending(self) -> int:
        with self._lock:
            return sum(p.left for p in self._script)

    def _take(self, body_text: str) -> Step:
        with self._lock:
            for pending in self._script:
                if pending.step.match is None or pending.step.match in body_text:
                    pending.left -= 1
                    if pending.left == 0:
                        self._script.remove(pending)
                    return pending.step
            return self._default

    def _key_ok(self, request: web.Request) -> bool | None:
        with self._lock:
            expected = self._expected_key
        if expected is None:
            return None
        return request.headers.get("x-api-key") == expected

    def _record(self, request: web.Request, body: Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        safe = {k: v for k, v in headers.items() if k not in SECRET_HEADERS}
        record = RecordedRequest(
            request.method, request.path, dict(request.query), safe, body,
            key_ok=self._key_ok(request),
        )  # fmt: skip
        with self._lock:
            self._requests.append(record)

    # --- the Messages API ----------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._record(request, raw.decode(errors="replace"))
            return _error_response(400, "invalid_request_error", "body is not JSON")
        self._record(request, body)
        if self._key_ok(request) is False:
            return _error_response(401, "authentication_error", "invalid x-api-key")
        if not isinstance(body, dict):
            return _error_response(400, "invalid_request_error", "body must be an object")
        step = self._take(raw.decode(errors="replace"))
        if isinstance(step, ErrorStep):
            headers = {}
            if step.retry_after is not None:
                headers["retry-after"] = f"{step.retry_after:g}"
            return web.json_response(wire.error_json(step), status=step.status, headers=headers)
        reply = wire.resolve(step, body)
        if not body.get("stream"):
            return web.json_response(wire.message_json(reply), headers=_request_id())
        return await self._stream(request, step, reply)

    async def _stream(
        self, request: web.Request, step: TextStep | ToolUseStep, reply: wire.Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
            | _request_id()
        )
        await response.prepare(request)
        for sent, event in enumerate(wire.stream_events(reply)):
            if step.stream.drop_after is not None and sent >= step.stream.drop_after:
                # Cut the TCP connection without finishing the chunked body.
                if request.transport is not None:
                    request.transport.abort()
                return response
            if step.stream.event_delay:
                await asyncio.sleep(step.stream.event_delay)
            await response.write(wire.sse_frame(event))
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "invalid_request_error", "body is not JSON")
        self._record(request, body)
        if self._key_ok(request) is False:
            return _error_response(401, "authentication_error", "invalid x-api-key")
        return web.json_response({"input_tokens": wire.estimate_tokens(body)})

    async def _hello(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.Response(status=200)

    async def _unknown(self, request: web.Request) -> web.Response:
        # Recorded, so a test can see what else the CLI asked for.
        self._record(request, (await request.read()).decode(errors="replace") or None)
        return _error_response(404, "not_found_error", f"fake has no {request.path}")

    # --- admin endpoints -----------------------------------------------------------------

    async def _admin_script(self, request: web.Request) -> web.Response:
        try:
            script = Script.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": exc.errors(include_url=False)}, status=400)
        if script.replace:
            with self._lock:
                self._script.clear()
        if script.default is not None:
            self.set_default(script.default)
        self.add(*script.steps)
        return web.json_response({"pending": self.pending()})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        path = request.query.get("path")
        records = [asdict(r) for r in self.requests if path is None or r.path == path]
        return web.json_response(records)

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"pending": 0})

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response({"pending": self.pending(), "requests": len(self.requests)})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_route("HEAD", "/api/hello", self._hello)
        app.router.add_get("/api/hello", self._hello, allow_head=False)
        app.router.add_post("/_fake/script", self._admin_script)
        app.router.add_get("/_fake/requests", self._admin_requests)
        app.router.add_post("/_fake/reset", self._admin_reset)
        app.router.add_get("/_fake/state", self._admin_state)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on the running loop; returns the base URL (port 0 picks a free port)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        # aiohttp has no public getter for the bound port.
        sockets = getattr(site._server, "sockets", None) or ()
        bound = next(iter(sockets)).getsockname()[1] if sockets else port
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a thread of its own, so synchronous tests can block on subprocesses."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start(host, port))
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=serve, name="fake-anthropic", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Anthropic API did not start")
        return self.url

    def stop_thread(self) -> None:
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(10)
            self._thread = None
            self._thread_loop = None


def _request_id() -> dict[str, str]:
    return {"request-id": f"req_fake_{time.monotonic_ns()}"}


def _error_response(status: int, error_type: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status)


def steps_json(steps: Iterable[Step]) -> dict[str, Any]:
    """Body for `POST /_fake/script`, for tests that drive a fake in another process."""
    return {"steps": [s.model_dump(mode="json") for s in steps]}
