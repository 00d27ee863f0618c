"""Lines of an HTTP response body as they arrive, each of bounded size.

aiohttp's own line reader raises LineTooLong (not a ClientError) past twice its read buffer
(128 to 512 KiB): one watch event of a large pod, or one runner event carrying a file the
agent wrote, passes that. So lines are split here from the raw chunks, with a bound of our
own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp


class LineTooLong(ValueError):
    """A line over the bound, when the caller cannot skip one."""


async def bounded_lines(
    content: aiohttp.StreamReader, max_line: int, skip_long: bool = False
) -> AsyncIterator[bytes]:
    """Each line (with its newline) as it completes. One longer than `max_line` raises
    LineTooLong, or with `skip_long` is yielded cut to `max_line` bytes (for the caller to
    report) and the rest of it dropped."""
    partial = bytearray()
    skipping = False
    async for chunk in content.iter_any():
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end >= 0 and not partial and not skipping and end + 1 - start <= max_line:
                # A whole line in one chunk (most watch events): one copy, not three.
                yield chunk[start : end + 1]
                start = end + 1
                continue
            piece = chunk[start:] if end < 0 else chunk[start : end + 1]
            if not skipping:
                if len(partial) + len(piece) > max_line:
                    if not skip_long:
                        raise LineTooLong(f"a line over {max_line} bytes")
                    partial += piece[: max_line - len(partial)]
                    yield bytes(partial)
                    partial.clear()
                    skipping = end < 0
                else:
                    partial += piece
                    if end >= 0:
                        yield bytes(partial)
                        partial.clear()
            elif end >= 0:
                skipping = False
            if end < 0:
                break
            start = end + 1
    if partial and not skipping:
        yield bytes(partial)
