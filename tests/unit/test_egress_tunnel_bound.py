"""The tunnel's own buffering is bounded: a destination that does not read stops the source
being read (the bytes wait in the kernel's socket buffers, not in the proxy)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios

import pytest

from corral.gateway.egress_tunnel import COPY_BUFFER, PIPE_SIZE, SPLICE, tunnel


def queued(sock: socket.socket) -> int:
    """Bytes waiting in a socket's receive queue."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
async def test_a_destination_that_does_not_read_bounds_what_the_tunnel_holds(
    splice: bool,
) -> None:
    if splice and not SPLICE:
        pytest.skip("no splice(2) here")
    client_end, proxy_client = socket.socketpair()
    proxy_upstream, upstream_end = socket.socketpair()
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.setblocking(False)
    read_from_client = [0]
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(
        tunnel(
            proxy_client,
            proxy_upstream,
            idle=60,
            counters={"up": lambda n: read_from_client.__setitem__(0, read_from_client[0] + n)},
            splice=splice,
        )
    )
    payload = os.urandom(64 * 1024 * 1024)  # far more than every buffer on the way
    sending = asyncio.create_task(loop.sock_sendall(client_end, payload))
    # Wait until the tunnel stops taking bytes: the upstream end reads nothing.
    seen = -1
    for _ in range(100):
        await asyncio.sleep(0.1)
        if read_from_client[0] == seen:
            break
        seen = read_from_client[0]
    assert not sending.done()
    held = read_from_client[0] - queued(upstream_end)  # taken from the client, not delivered
    assert 0 <= held <= (PIPE_SIZE if splice else COPY_BUFFER), held
    assert read_from_client[0] < len(payload) // 4

    got = bytearray()  # reading again lets everything through, intact and in order
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(loop.sock_recv(upstream_end, 1 << 20), 30)
        assert chunk, "EOF too early"
        got += chunk
    await asyncio.wait_for(sending, 30)
    assert got == payload
    assert read_from_client[0] == len(payload)
    running.cancel()
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.close()


async def test_a_tunnel_that_cannot_get_its_second_pipe_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not SPLICE:
        pytest.skip("no splice(2) here")
    real_pipe2 = os.pipe2
    calls = [0]

    def second_fails(flags: int) -> tuple[int, int]:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(24, "Too many open files")
        return real_pipe2(flags)

    client_end, proxy_client = socket.socketpair()
    proxy_upstream, upstream_end = socket.socketpair()
    for sock in (proxy_client, proxy_upstream):
        sock.setblocking(False)
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "pipe2", second_fails)
    with pytest.raises(OSError):
        await tunnel(proxy_client, proxy_upstream, idle=60)
    monkeypatch.setattr(os, "pipe2", real_pipe2)
    assert len(os.listdir("/proc/self/fd")) == before  # the first direction's pipe closed
    loop = asyncio.get_running_loop()
    # Nothing left watching the client's descriptor (it would be a later socket's number).
    assert not loop.remove_reader(proxy_client.fileno())
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.close()
