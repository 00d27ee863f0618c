"""A client that keeps its connection and stops reading is cut off, at the runner and at
the gateway, instead of holding the stream (its handler, slot and buffers) for as long as
it stays connected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web

from corral import stalled_reader
from corral.runner import sse
from corral.runner.agent import Turn
from corral.stalled_reader import ReaderStalled
from corral.testing.serving import route, serving

T = TypeVar("T")
BIG_TEXT = "x" * 65536  # loopback's socket buffers take megabytes before a write waits
# For WebSockets, which aiohttp compresses when both ends offer to.
RANDOM_TEXT = base64.b64encode(os.urandom(49152)).decode()


@pytest.fixture(autouse=True)
def short_stall_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stalled_reader, "WRITE_STALL_SECONDS", 0.5)


@pytest.fixture
def stalled_client() -> Iterator[socket.socket]:
    """A connection that sends its request and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    yield sock
    sock.close()


class Outcome:
    """How a server-side await ended: None when it returned, else what it raised."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )

    async def of(self, awaitable: Awaitable[T]) -> T:
        try:
            result = await awaitable
        except BaseException as error:
            self.ended.set_result(error)
            raise
        self.ended.set_result(None)
        return result

    async def wait(self) -> BaseException | None:
        return await asyncio.wait_for(self.ended, 20)


async def _request(sock: socket.socket, url: str, path: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    sock.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())


async def test_a_runner_cuts_off_a_reader_that_stopped_reading(
    stalled_client: socket.socket,
) -> None:
    turn = Turn("main", "hi")
    for _ in range(400):  # 25 MiB waiting for the one reader
        turn.publish({"type": "text_delta", "text": BIG_TEXT})
    sent = Outcome()

    async def messages(request: web.Request) -> web.StreamResponse:
        response = await sse.open_stream(request)
        await sent.of(sse.send_turn(request, response, turn))
        return response

    async with serving(route(messages, "/v1/messages"), shutdown_timeout=0.1) as url:
        await _request(stalled_client, url, "/v1/messages")
        error = await sent.wait()
    assert isinstance(error, ReaderStalled), error
    assert turn.events.closed and len(turn.events) == 0  # nothing kept for it any more


async def test_the_gateway_cuts_off_a_stalled_reader_and_lets_go_of_the_runner(
    stalled_client: socket.socket,
) -> None:
    from corral.gateway.proxy import forward_http

    runner_done = asyncio.Event()
    forwarded = Outcome()

    async def runner(request: web.Request) -> web.StreamResponse:
        response = await sse.open_stream(request)
        try:
            while True:  # a long reply, as fast as it is taken
                await response.write(sse.frame({"type": "text_delta", "text": BIG_TEXT}))
        except ConnectionError:
            return response
        finally:
            runner_done.set()

    async def gateway(request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as client:
            return await forwarded.of(
                forward_http(client, request, f"{runner_url}/s", None, "cred", silence_seconds=5)
            )

    async with (
        serving(route(runner, "/s"), shutdown_timeout=0.1) as runner_url,
        serving(route(gateway, "/s"), shutdown_timeout=0.1) as gateway_url,
    ):
        await _request(stalled_client, gateway_url, "/s")
        error = await forwarded.wait()
        assert isinstance(error, ReaderStalled), error
        # The runner's stream was let go of too: its writes failed, its handler ended.
        await asyncio.wait_for(runner_done.wait(), 20)


async def test_a_slow_reader_that_keeps_reading_is_not_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is on a write making no progress, not on a stream being slow."""
    monkeypatch.setattr(stalled_reader, "WRITE_STALL_SECONDS", 0.5)
    sent = 480  # 30 MiB: more than loopback's socket buffers hold, so writes wait
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[float | BaseException] = loop.create_future()

    async def slow_taker(request: web.Request) -> web.StreamResponse:
        response = await sse.open_stream(request)
        started = loop.time()
        try:
            for _ in range(sent):
                await stalled_reader.send_or_cut(request, response.write(b"x" * 65536))
        except BaseException as error:
            finished.set_result(error)
            raise
        finished.set_result(loop.time() - started)
        await response.write_eof()
        return response

    with socket.socket() as reader:
        reader.setblocking(False)
        async with serving(route(slow_taker)) as url:
            await _request(reader, url, "/")
            give_up = loop.time() + 60
            while not finished.done() and loop.time() < give_up:
                with contextlib.suppress(BlockingIOError):  # 64 KiB every 4 ms at most
                    reader.recv(65536)
                await asyncio.sleep(0.004)
            took = await asyncio.wait_for(finished, 1)
    # Longer than the bound in all, and never cut off: every write made progress.
    assert isinstance(took, float), took
    assert took > 2 * stalled_reader.WRITE_STALL_SECONDS, took


async def test_the_gateway_cuts_off_a_stalled_websocket_reader(
    stalled_client: socket.socket,
) -> None:
    """aiohttp's heartbeat does not end a send waiting on a client that stopped reading."""
    from corral.gateway.proxy import pump_websocket

    runner_closed = asyncio.Event()
    pumped = Outcome()

    async def runner(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        async def reply() -> None:  # a long one; the runner reads on meanwhile, as it does
            with contextlib.suppress(ConnectionError):
                while not ws.closed:
                    await ws.send_str(BIG_TEXT)

        replying = asyncio.create_task(reply())
        async for _ in ws:
            pass
        replying.cancel()
        runner_closed.set()
        return ws

    async def gateway(request: web.Request) -> web.WebSocketResponse:
        client_ws = web.WebSocketResponse(heartbeat=30)
        await client_ws.prepare(request)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{runner_url}/ws") as upstream,
        ):
            await pumped.of(pump_websocket(request, client_ws, upstream))
        return client_ws

    async with (
        serving(route(runner, "/ws"), shutdown_timeout=0.1) as runner_url,
        serving(route(gateway, "/ws"), shutdown_timeout=0.1) as gateway_url,
    ):
        host, port = gateway_url.removeprefix("http://").split(":")
        await asyncio.get_running_loop().sock_connect(stalled_client, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        stalled_client.send(
            f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        # The pump ended with both sides closed, and says why (the gateway counts it).
        assert isinstance(await pumped.wait(), ReaderStalled)
        await asyncio.wait_for(runner_closed.wait(), 20)


async def test_the_gateway_lets_go_of_a_runner_that_stopped_reading() -> None:
    """A runner (code inside a session) that takes none of the caller's messages would hold
    the gateway's send, and with it the whole pump, for as long as it kept its connection:
    the runner client's sockets make the kernel drop it instead."""
    from corral.gateway.proxy import StreamingClient, pump_websocket

    runner_took_nothing = asyncio.Event()
    pumped = Outcome()

    async def runner(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        runner_took_nothing.set()
        await asyncio.sleep(3600)  # never reads: aiohttp soon stops reading the socket
        return ws

    upstreams = StreamingClient(connect_timeout=5, untrusted_upstream=True)

    async def gateway(request: web.Request) -> web.WebSocketResponse:
        client_ws = web.WebSocketResponse(heartbeat=30)
        await client_ws.prepare(request)
        async with upstreams.get().ws_connect(f"{runner_url}/ws") as upstream:
            await pumped.of(pump_websocket(request, client_ws, upstream))
        return client_ws

    async def keep_sending(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while not ws.closed:
                await ws.send_str(RANDOM_TEXT)

    try:
        async with (
            serving(route(runner, "/ws"), shutdown_timeout=0.1) as runner_url,
            serving(route(gateway, "/ws"), shutdown_timeout=0.1) as gateway_url,
            aiohttp.ClientSession() as caller,
            caller.ws_connect(f"{gateway_url}/ws") as caller_ws,
        ):
            sending = asyncio.create_task(keep_sending(caller_ws))
            await asyncio.wait_for(runner_took_nothing.wait(), 20)
            closing = await asyncio.wait_for(caller_ws.receive(), 20)
            sending.cancel()
            # The caller is told the far side failed, not that all went well, and the
            # pump has ended: nothing holds the gateway's handler any more.
            assert closing.type == aiohttp.WSMsgType.CLOSE, closing
            assert closing.data == aiohttp.WSCloseCode.INTERNAL_ERROR, closing
            assert await pumped.wait() is None
    finally:
        await upstreams.close()


async def test_a_runner_that_reads_slowly_is_not_cut_off() -> None:
    """The kernel's bound, like the gateway's own, is on sent data making no progress."""
    from corral.gateway.proxy import StreamingClient

    loop = asyncio.get_running_loop()
    taken = 0
    done_sending = asyncio.Event()

    async def slow_runner(request: web.Request) -> web.WebSocketResponse:
        nonlocal taken
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            taken += 1
            if not done_sending.is_set():
                await asyncio.sleep(0.02)  # about 3 MiB/s: far slower than it is sent
        return ws

    upstreams = StreamingClient(connect_timeout=5, untrusted_upstream=True)
    try:
        async with (
            serving(route(slow_runner, "/ws"), shutdown_timeout=0.1) as runner_url,
            upstreams.get().ws_connect(f"{runner_url}/ws") as upstream,
        ):
            sent = 0
            until = loop.time() + 6 * stalled_reader.WRITE_STALL_SECONDS
            while loop.time() < until:
                await upstream.send_str(RANDOM_TEXT)  # raises if the kernel dropped it
                sent += 1
            taken_meanwhile = taken
            done_sending.set()
    finally:
        await upstreams.close()
    # Writes waited on the runner (it had taken less than was sent), none was cut off.
    assert sent > taken_meanwhile > 0, (sent, taken_meanwhile)
