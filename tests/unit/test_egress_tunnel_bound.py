"""The tunnel's own buffering is bounded: a destination that does not read stops the source
being read (the bytes wait in the kernel's socket buffers, not in the proxy), and a buffer
is lent to a direction only while it holds bytes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios

import pytest

from corral.gateway.egress_tunnel import BUFFER_SIZE, BufferPool, tunnel


def queued(sock: socket.socket) -> int:
    """Bytes waiting in a socket's receive queue."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


async def test_a_destination_that_does_not_read_bounds_what_the_tunnel_holds() -> None:
    pool = BufferPool()
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
            pool=pool,
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
    assert 0 <= held <= BUFFER_SIZE, held
    assert read_from_client[0] < len(payload) // 4
    assert pool.lent == 1  # the up direction's, holding what the upstream has not taken

    got = bytearray()  # reading again lets everything through, intact and in order
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(loop.sock_recv(upstream_end, 1 << 20), 30)
        assert chunk, "EOF too early"
        got += chunk
    await asyncio.wait_for(sending, 30)
    assert got == payload
    assert read_from_client[0] == len(payload)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pool.lent == 0
    for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
        sock.close()


async def test_quiet_tunnels_hold_no_buffer_and_a_stopped_one_gives_its_back() -> None:
    pool = BufferPool(keep=2)
    loop = asyncio.get_running_loop()
    pairs = []
    for _ in range(5):
        client_end, proxy_client = socket.socketpair()
        proxy_upstream, upstream_end = socket.socketpair()
        for sock in (client_end, proxy_client, proxy_upstream, upstream_end):
            sock.setblocking(False)
        running = asyncio.create_task(tunnel(proxy_client, proxy_upstream, idle=60, pool=pool))
        pairs.append((running, client_end, proxy_client, proxy_upstream, upstream_end))
    for _running, client_end, _pc, _pu, upstream_end in pairs:
        await loop.sock_sendall(client_end, b"ping" * 1000)
        got = b""
        while len(got) < 4000:
            got += await asyncio.wait_for(loop.sock_recv(upstream_end, 65536), 10)
        assert got == b"ping" * 1000
    assert pool.lent == 0  # every byte delivered: no direction holds a buffer
    assert 1 <= len(pool.free) <= 2  # reused, and no more kept than asked
    assert all(len(buffer) == BUFFER_SIZE for buffer in pool.free)

    # One upstream stops reading: only that direction keeps a buffer, until the tunnel ends.
    running, client_end, *_middle, upstream_end = pairs[0]
    sending = asyncio.create_task(loop.sock_sendall(client_end, os.urandom(32 * 1024 * 1024)))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if pool.lent:
            break
    await asyncio.sleep(0.2)
    assert pool.lent == 1
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pool.lent == 0
    sending.cancel()
    for running, *socks in pairs:
        running.cancel()
        for sock in socks:
            sock.close()
