"""The read buffer asyncio gives each TLS connection, sized for a process of many connections.

asyncio's TLS protocol allocates a 256 KiB buffer per connection (`SSLProtocol.max_size`)
and fills it with zeros at once, so every pooled keep-alive connection holds a quarter MiB
of resident memory for its life: at 1,000 sessions the operator's API connections held about
9 MB of them (tracemalloc, docs/startup-benchmarks.md "Session 21"). A read loop needs far
less: TLS records are at most 16 KiB, and a smaller buffer only means more reads of a long
response, each a few records.
"""

from __future__ import annotations

import asyncio.sslproto

# Two full TLS records per read; the operator measured no slower with it than with 64 or
# 256 KiB (docs/startup-benchmarks.md, "Session 21").
TLS_READ_BUFFER_BYTES = 32 * 1024


def shrink_tls_read_buffers(size: int = TLS_READ_BUFFER_BYTES) -> int:
    """Give the TLS connections this process opens from now on a read buffer of `size`
    bytes (never a larger one than asyncio's own), and return the size in force.

    A class attribute of the standard library's protocol, which its own reads take their
    size from; tests/unit/test_tls_buffers.py fails if a Python release stops honouring it.
    """
    protocol = asyncio.sslproto.SSLProtocol
    protocol.max_size = min(protocol.max_size, size)
    return protocol.max_size
