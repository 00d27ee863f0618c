"""Two paths to the same server timed side by side: a direct one and one through a proxy.

Each round times both, alternating which goes first, so that load on a shared machine falls
on both alike; the report is each path's p50/p99 and what the proxy adds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.kube import percentile

# One timed request: (milliseconds to the first byte or event, milliseconds to the end).
Timed = Callable[[], Awaitable[tuple[float, float]]]


async def side_by_side(
    direct: Timed, proxied: Timed, *, proxied_label: str, end_label: str, warmup: int, rounds: int
) -> dict[str, Any]:
    paths = {"direct": direct, proxied_label: proxied}
    series: dict[str, dict[str, list[float]]] = {
        label: {"first": [], end_label: []} for label in paths
    }
    for _ in range(warmup):  # caches, connection pools, the proxy's auth cache
        for timed in paths.values():
            await timed()
    order = list(paths.items())
    for i in range(rounds):
        for label, timed in order if i % 2 == 0 else order[::-1]:
            first, end = await timed()
            series[label]["first"].append(first)
            series[label][end_label].append(end)
    summary: dict[str, Any] = {"messages": rounds}
    for label, values in series.items():
        for kind, numbers in values.items():
            summary[f"{label}_{kind}_p50_ms"] = percentile(numbers, 50)
            summary[f"{label}_{kind}_p99_ms"] = percentile(numbers, 99)
    summary.update(added(series, proxied_label, ("first", end_label)))
    summary["raw"] = series
    return summary


def added(
    series: dict[str, dict[str, list[float]]], proxied_label: str, kinds: tuple[str, ...]
) -> dict[str, float]:
    """What the proxy adds: the difference of the two paths' percentiles, and the median of
    the differences within each round's pair (the two messages sent back to back), which
    the load's swings move far less than a difference of two wide distributions."""
    out: dict[str, float] = {}
    for kind in kinds:
        direct, proxied = series["direct"][kind], series[proxied_label][kind]
        for q in (50, 99):
            out[f"added_{kind}_p{q}_ms"] = percentile(proxied, q) - percentile(direct, q)
        pairs = [b - a for a, b in zip(direct, proxied, strict=True)]
        out[f"added_{kind}_paired_p50_ms"] = percentile(pairs, 50)
    return out
