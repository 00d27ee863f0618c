"""The asyncio client: sessions through the API server, traffic through the gateway.

async with AsyncClient() as corral:
    async for event in corral.send("demo/chat", "hello"):
        ...
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp

from corral.client.config import (
    ENV_GATEWAY_CA,
    Credentials,
    GatewayTarget,
    gateway_target,
    load_credentials,
)
from corral.client.errors import CorralError, api_error, gateway_error
from corral.client.events import Event, Reply, SseParser, ends_turn
from corral.client.sessions import GROUP, PLURAL, VERSION, Ref, Session, parse_ref
from corral.stream_lines import bounded_lines

WAKE_ANNOTATION = "corral.dev/wake"
MERGE_PATCH = "application/merge-patch+json"
API_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
# A message's stream: the runner sends a keepalive every 15 s, so a minute of silence is a
# gateway or node gone without closing the connection (a script must not hang on it).
MESSAGE_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
MAX_LINE = 2 * 1024 * 1024


class AsyncStream:
    """One WebSocket to a session: send messages and interrupts, read events, both at once."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, ref: Ref) -> None:
        self._ws = ws
        self.ref = ref

    async def send(self, text: str, agent: str | None = None) -> None:
        command: dict[str, Any] = {"type": "message", "text": text}
        if agent:
            command["agent"] = agent
        await self._ws.send_json(command)

    async def interrupt(self, agent: str | None = None) -> None:
        command: dict[str, Any] = {"type": "interrupt"}
        if agent:
            command["agent"] = agent
        await self._ws.send_json(command)

    async def watch(self, agent: str | None = None) -> None:
        """Also receive the turns the agent begins itself (a background task it started
        ended, say): their events carry `ownTurn: true`. Answered with `watching`."""
        command: dict[str, Any] = {"type": "watch"}
        if agent:
            command["agent"] = agent
        await self._ws.send_json(command)

    async def events(self) -> AsyncIterator[Event]:
        """Every event until the connection closes."""
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event

    async def close(self) -> None:
        await self._ws.close()

    @property
    def closed(self) -> bool:
        return self._ws.closed


class AsyncClient:
    """Create, list, watch and talk to AgentSessions with the caller's own credentials."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        gateway_url: str | None = None,
        gateway_namespace: str | None = None,
        gateway_service: str | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.credentials = credentials or load_credentials(kubeconfig, context)
        self.gateway: GatewayTarget = gateway_target(
            self.credentials, gateway_url, gateway_namespace, gateway_service
        )
        self._http: aiohttp.ClientSession | None = None
        self._gateway_tls: ssl.SSLContext | None = None

    @property
    def namespace(self) -> str:
        """The default namespace (the kubeconfig context's)."""
        return self.credentials.namespace

    def ref(self, session: str | Ref) -> Ref:
        return session if isinstance(session, Ref) else parse_ref(session, self.namespace)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.credentials.ssl_context),
                timeout=API_TIMEOUT,
                read_bufsize=2**16,
                max_line_size=MAX_LINE,
                max_field_size=MAX_LINE,
            )
        return self._http

    # --- the API server ------------------------------------------------------------------

    def _api_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        return headers

    async def _api(
        self,
        method: str,
        path: str,
        what: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = self._api_headers()
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._session().request(
                method,
                self.credentials.server + path,
                data=None if body is None else json.dumps(body),
                params=params,
                headers=headers,
            ) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    raise CorralError(
                        f"{what}: the API server answered HTTP {response.status} with "
                        "something that is not JSON",
                        "check the server in your kubeconfig",
                        response.status,
                    ) from None
                if response.status >= 400:
                    raise api_error(response.status, payload if isinstance(payload, dict) else {},
                                    what)  # fmt: skip
                return payload if isinstance(payload, dict) else {}
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as error:
            raise _unreachable(
                "the Kubernetes API server", self.credentials.server, error
            ) from None

    @staticmethod
    def _path(namespace: str | None, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}"
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{PLURAL}"
        return path + (f"/{name}" if name else "")

    async def list(
        self, namespace: str | None = None, all_namespaces: bool = False
    ) -> list[Session]:
        """Sessions of one namespace (default: the context's), or of all of them."""
        ns = None if all_namespaces else (namespace or self.namespace)
        body = await self._api("GET", self._path(ns), f"sessions in {ns or 'any namespace'}")
        sessions = [Session.from_object(item) for item in body.get("items") or []]
        return sorted(sessions, key=lambda s: (s.namespace, s.name))

    async def get(self, session: str | Ref) -> Session:
        ref = self.ref(session)
        body = await self._api("GET", self._path(ref.namespace, ref.name), f"session {ref}")
        return Session.from_object(body)

    async def create(self, manifest: dict[str, Any], namespace: str | None = None) -> Session:
        """Create an AgentSession from a manifest (or a bare spec); `metadata.name` or
        `metadata.generateName` names it."""
        body = to_manifest(manifest)
        ns = namespace or body["metadata"].get("namespace") or self.namespace
        body["metadata"]["namespace"] = ns
        name = body["metadata"].get("name") or body["metadata"].get("generateName", "") + "*"
        created = await self._api("POST", self._path(ns), f"session {ns}/{name}", body)
        return Session.from_object(created)

    async def delete(self, session: str | Ref) -> None:
        ref = self.ref(session)
        await self._api(
            "DELETE", self._path(ref.namespace, ref.name), f"session {ref}",
            {"propagationPolicy": "Background"},
        )  # fmt: skip

    async def _patch(self, ref: Ref, patch: dict[str, Any]) -> Session:
        body = await self._api(
            "PATCH", self._path(ref.namespace, ref.name), f"session {ref}", patch, None,
            MERGE_PATCH,
        )  # fmt: skip
        return Session.from_object(body)

    async def wake(self, session: str | Ref) -> Session:
        """Ask the operator to wake a sleeping Hybrid session (a fresh `corral.dev/wake`)."""
        ref = self.ref(session)
        value = f"client {datetime.now(UTC).isoformat(timespec='milliseconds')}"
        return await self._patch(ref, {"metadata": {"annotations": {WAKE_ANNOTATION: value}}})

    async def suspend(self, session: str | Ref, suspend: bool = True) -> Session:
        return await self._patch(self.ref(session), {"spec": {"suspend": suspend}})

    async def resume(self, session: str | Ref) -> Session:
        return await self.suspend(session, False)

    async def wait(
        self,
        session: str | Ref,
        until: Callable[[Session], bool] = lambda s: s.finished,
        timeout_seconds: float | None = None,
        on_change: Callable[[Session], None] | None = None,
        poll_seconds: float = 1.0,
    ) -> Session:
        """Poll the session until `until(session)` (default: Succeeded or Failed)."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        last: Session | None = None
        while True:
            current = await self.get(session)
            if on_change is not None and (last is None or _progress(last) != _progress(current)):
                on_change(current)
            last = current
            if until(current):
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise CorralError(
                    f"session {current.ref} is still {current.phase} after {timeout_seconds:g} s",
                    "wait longer, or look at `corral logs`",
                )
            await asyncio.sleep(poll_seconds)

    async def logs(self, session: str | Ref, follow: bool = False) -> AsyncIterator[str]:
        """The lines of the runner's log (its current pod)."""
        current = await self.get(session)
        if not current.pod_name:
            raise CorralError(
                f"session {current.ref} has no pod now (phase {current.phase})",
                "wake it with `corral wake`" if current.phase == "Idle" else "",
            )
        path = f"/api/v1/namespaces/{current.namespace}/pods/{current.pod_name}/log"
        params = {"container": "runner", "follow": "true" if follow else "false"}
        try:
            async with self._session().get(
                self.credentials.server + path, params=params, headers=self._api_headers(),
                timeout=STREAM_TIMEOUT,
            ) as response:  # fmt: skip
                if response.status in (400, 404):
                    raise CorralError(
                        f"pod {current.pod_name} of {current.ref} has no log to show",
                        "it may not have started yet: see `kubectl describe pod -n "
                        f"{current.namespace} {current.pod_name}`",
                        response.status,
                    )
                if response.status >= 400:
                    payload = await response.json(content_type=None)
                    raise api_error(response.status, payload if isinstance(payload, dict) else {},
                                    f"log of pod {current.pod_name}")  # fmt: skip
                async for line in bounded_lines(response.content, MAX_LINE, skip_long=True):
                    yield line.decode("utf-8", "replace").rstrip("\n")
        except (aiohttp.ClientConnectionError, OSError) as error:
            raise _unreachable(
                "the Kubernetes API server", self.credentials.server, error
            ) from None

    # --- the gateway ---------------------------------------------------------------------

    def _gateway_ssl(self) -> ssl.SSLContext | bool:
        """TLS to the gateway: through the API server, the kubeconfig's (its CA, its client
        certificate); at a URL of its own (an Ingress), the system's trust store (or
        CORRAL_GATEWAY_CA), always verified, never the cluster's client certificate: a
        kubeconfig's insecure-skip-tls-verify must not send the token unverified elsewhere."""
        if self.gateway.via_api_server:
            return self.credentials.ssl_context
        if self._gateway_tls is None:
            self._gateway_tls = ssl.create_default_context(
                cafile=os.environ.get(ENV_GATEWAY_CA) or None
            )
        return self._gateway_tls

    def _gateway_url(self, ref: Ref, path: str) -> str:
        return f"{self.gateway.base_url}/sessions/{ref.namespace}/{ref.name}{path}"

    async def _gateway_json(
        self, method: str, ref: Ref, path: str, body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        headers = self.gateway.headers(self.credentials)
        try:
            async with self._session().request(
                method, self._gateway_url(ref, path), json=body, params=params, headers=headers,
                timeout=aiohttp.ClientTimeout(total=180, sock_connect=10), ssl=self._gateway_ssl(),
            ) as response:  # fmt: skip
                raw = await response.read()
                if response.status >= 400:
                    raise gateway_error(response.status, raw, str(ref))
                payload = json.loads(raw or b"{}")
                return payload if isinstance(payload, dict) else {}
        except (aiohttp.ClientConnectionError, OSError) as error:
            raise _unreachable("the gateway", self.gateway.base_url, error) from None
        except ValueError:
            raise CorralError(f"{ref}: the gateway answered something that is not JSON") from None

    async def status(self, session: str | Ref) -> dict[str, Any]:
        """The runner's own status (state, turns, cost, agents)."""
        return await self._gateway_json("GET", self.ref(session), "/v1/status")

    async def transcript(
        self, session: str | Ref, agent: str | None = None, limit: int = 200
    ) -> dict[str, Any]:
        params = {"limit": str(limit)} | ({"agent": agent} if agent else {})
        return await self._gateway_json("GET", self.ref(session), "/v1/transcript", None, params)

    async def interrupt(self, session: str | Ref, agent: str | None = None) -> bool:
        body = {"agent": agent} if agent else {}
        answer = await self._gateway_json("POST", self.ref(session), "/v1/interrupt", body)
        return bool(answer.get("interrupted"))

    async def send(
        self, session: str | Ref, text: str, agent: str | None = None
    ) -> AsyncIterator[Event]:
        """Send one message and yield its events as they arrive, the last one its `result`
        (or an `error` event when the session refused it)."""
        ref = self.ref(session)
        body: dict[str, Any] = {"text": text}
        if agent:
            body["agent"] = agent
        headers = self.gateway.headers(self.credentials) | {"Accept": "text/event-stream"}
        try:
            async with self._session().post(
                self._gateway_url(ref, "/v1/messages"), json=body, headers=headers,
                timeout=MESSAGE_TIMEOUT, ssl=self._gateway_ssl(),
            ) as response:  # fmt: skip
                if response.status >= 400:
                    raise gateway_error(response.status, await response.read(), str(ref))
                parser = SseParser()
                async for raw in bounded_lines(response.content, MAX_LINE, skip_long=True):
                    event = parser.feed(raw.decode("utf-8", "replace"))
                    if event is not None:
                        yield event
                        if ends_turn(event):
                            return
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
            raise _unreachable("the gateway", self.gateway.base_url, error) from None
        except TimeoutError:
            raise CorralError(
                f"{ref}: the stream sent nothing for 60 s (not even a keepalive)",
                "the gateway or the session's node may be gone: see `corral ls`",
            ) from None
        raise CorralError(
            f"{ref}: the stream ended before the message's result",
            "the runner may have restarted: see `corral transcript`",
        )

    async def ask(self, session: str | Ref, text: str, agent: str | None = None) -> Reply:
        """Send one message and wait for its whole reply."""
        reply = Reply()
        async for event in self.send(session, text, agent):
            reply.add(event)
        return reply

    async def stream(self, session: str | Ref) -> AsyncStream:
        """A WebSocket to the session (close it when done). Connecting wakes a sleeping
        session; the first event is then `{"type": "waking"}`."""
        ref = self.ref(session)
        url = self._gateway_url(ref, "/v1/stream")
        headers = self.gateway.headers(self.credentials)
        try:
            ws = await self._session().ws_connect(
                url, headers=headers, heartbeat=30, timeout=aiohttp.ClientWSTimeout(ws_close=10),
                max_msg_size=MAX_LINE, ssl=self._gateway_ssl(),
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError as error:
            # The refusal's JSON body is lost in the handshake; ask again plainly to read it.
            async with self._session().get(
                url, headers=headers, ssl=self._gateway_ssl()
            ) as response:
                raise gateway_error(error.status, await response.read(), str(ref)) from None
        except (aiohttp.ClientConnectionError, OSError) as error:
            raise _unreachable("the gateway", self.gateway.base_url, error) from None
        return AsyncStream(ws, ref)


def _progress(session: Session) -> tuple[Any, ...]:
    return (session.phase, session.num_turns, session.total_cost_usd)


def _unreachable(what: str, url: str, error: BaseException) -> CorralError:
    detail = str(error) or type(error).__name__
    return CorralError(
        f"cannot reach {what} at {url}: {detail[:200]}",
        "check your network and kubeconfig"
        + (", or set CORRAL_GATEWAY_URL" if what == "the gateway" else ""),
    )


def to_manifest(document: dict[str, Any]) -> dict[str, Any]:
    """A full AgentSession manifest from a manifest or a bare spec (has no `spec` key)."""
    if not isinstance(document, dict):
        raise CorralError("the task file is not a mapping", "write an AgentSession manifest")
    if "spec" in document or "kind" in document:
        kind = document.get("kind", "AgentSession")
        if kind != "AgentSession":
            raise CorralError(f"kind {kind!r} is not AgentSession", "set kind: AgentSession")
        manifest: dict[str, Any] = json.loads(json.dumps(document))
        manifest["apiVersion"] = f"{GROUP}/{VERSION}"
        manifest["kind"] = "AgentSession"
        manifest.setdefault("metadata", {})
        manifest.setdefault("spec", {})
        return manifest
    spec: dict[str, Any] = json.loads(json.dumps(document))
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentSession",
        "metadata": {},
        "spec": spec,
    }
