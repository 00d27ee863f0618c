"""Lines split from a response body's raw chunks, each bounded (corral.stream_lines)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest

from corral.stream_lines import LineTooLong, bounded_lines


class Chunks:
    """What bounded_lines reads of an aiohttp StreamReader: its chunks as they came."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def lines(*chunks: bytes, max_line: int = 10, skip_long: bool = False) -> list[bytes]:
    content = cast(aiohttp.StreamReader, Chunks(*chunks))
    return [line async for line in bounded_lines(content, max_line, skip_long)]


async def test_lines_whole_split_and_unfinished() -> None:
    assert await lines(b"a\nbb\n", b"c", b"c\n", b"\nd") == [b"a\n", b"bb\n", b"cc\n", b"\n", b"d"]
    # A line begun in one chunk and ended in the next, then whole ones after it.
    assert await lines(b"ab", b"c\nd\ne\n") == [b"abc\n", b"d\n", b"e\n"]


async def test_a_line_over_the_bound_is_refused_or_cut() -> None:
    with pytest.raises(LineTooLong):
        await lines(b"0123456789X\n")
    with pytest.raises(LineTooLong):
        await lines(b"01234", b"56789X\n")
    # Cut to the bound, the rest of it dropped, whole or split across chunks.
    assert await lines(b"0123456789XY\nok\n", skip_long=True) == [b"0123456789", b"ok\n"]
    assert await lines(b"012345", b"6789XY", b"Z\nok\n", skip_long=True) == [
        b"0123456789",
        b"ok\n",
    ]
    # Exactly at the bound (newline included) is a line.
    assert await lines(b"012345678\n") == [b"012345678\n"]
