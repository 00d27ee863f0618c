"""The TLS read buffer the operator gives its connections: smaller, and still reads it all."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from corral.cluster.pki import Pki
from corral.kube.tls_buffers import TLS_READ_BUFFER_BYTES, shrink_tls_read_buffers

ASYNCIO_DEFAULT = 256 * 1024
BODY = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)  # 3 MiB and a bit, ~50 buffers


@pytest.fixture
def shrunk(monkeypatch: pytest.MonkeyPatch) -> int:
    """Shrink for one test; the class attribute is restored afterwards."""
    protocol = asyncio.sslproto.SSLProtocol
    monkeypatch.setattr(protocol, "max_size", protocol.max_size)
    return shrink_tls_read_buffers()


def _new_protocol() -> asyncio.sslproto.SSLProtocol:
    loop = asyncio.new_event_loop()
    try:
        context = ssl.create_default_context()
        return asyncio.sslproto.SSLProtocol(
            loop, asyncio.Protocol(), context, None, server_hostname="example.test"
        )
    finally:
        loop.close()


def test_a_new_tls_connection_reads_into_the_smaller_buffer(shrunk: int) -> None:
    assert shrunk == TLS_READ_BUFFER_BYTES
    # What the transport reads the socket into: this Python must honour the class attribute.
    assert len(_new_protocol().get_buffer(-1)) == TLS_READ_BUFFER_BYTES


def test_never_grows_the_buffer(shrunk: int) -> None:
    assert shrink_tls_read_buffers(1024 * 1024) == TLS_READ_BUFFER_BYTES
    assert shrink_tls_read_buffers(16 * 1024) == 16 * 1024
    assert len(_new_protocol().get_buffer(-1)) == 16 * 1024


def test_without_it_asyncio_gives_a_quarter_mib() -> None:
    # The premise of the module (in a fresh interpreter: this one's may have been shrunk by
    # an operator started in-process): if asyncio's default changes, so does the saving.
    probe = "import asyncio.sslproto as p; print(p.SSLProtocol.max_size)"
    default = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    assert int(default.stdout) == ASYNCIO_DEFAULT


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"))
    made.ensure(("127.0.0.1",))
    return made


async def _fetch_over_tls(pki: Pki, body: bytes) -> tuple[bytes, int]:
    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.cert("apiserver"), pki.key("apiserver"))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context(cafile=Path(pki.ca_cert))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{port}/", ssl=client_context) as response,
        ):
            return await response.read(), response.status
    finally:
        await runner.cleanup()


def test_a_long_response_arrives_whole_through_the_smaller_buffer(shrunk: int, pki: Pki) -> None:
    received, status = asyncio.run(_fetch_over_tls(pki, BODY))
    assert status == 200
    assert len(received) == len(BODY)
    assert received == BODY
