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


def test_paired_added_time_follows_each_round_not_the_spread() -> None:
    """A load swing that slows both messages of a round moves the percentiles' difference,
    not the pairs' median."""
    from bench.paired import added

    direct = [10.0, 10.0, 10.0, 50.0, 50.0]
    proxied = [11.0, 11.0, 51.0, 51.0, 51.0]  # 1 ms more in each round but one
    found = added({"direct": {"x": direct}, "gw": {"x": proxied}}, "gw", ("x",))
    assert found["added_x_paired_p50_ms"] == 1.0
    assert found["added_x_p50_ms"] == 41.0
