"""bench.paired: both paths timed in every round, alternating which goes first."""

from __future__ import annotations

import asyncio

from bench.paired import side_by_side


def test_rounds_alternate_and_the_added_time_is_the_difference() -> None:
    calls: list[str] = []

    async def direct() -> tuple[float, float]:
        calls.append("direct")
        return 1.0, 10.0

    async def proxied() -> tuple[float, float]:
        calls.append("proxied")
        return 3.0, 15.0

    summary = asyncio.run(
        side_by_side(direct, proxied, proxied_label="gw", end_label="end", warmup=1, rounds=4)
    )
    # Warm-up, then rounds alternating who goes first.
    assert calls == ["direct", "proxied"] + ["direct", "proxied", "proxied", "direct"] * 2
    assert summary["messages"] == 4
    assert summary["added_first_p50_ms"] == 2.0 and summary["added_end_p99_ms"] == 5.0
    assert summary["raw"]["gw"]["end"] == [15.0] * 4
