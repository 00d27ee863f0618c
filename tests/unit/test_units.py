"""Quantities and durations, read as the API server's CEL reads them."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from corral.api.units import format_bytes, parse_duration, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("128Mi", Decimal(128 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("+2k", Decimal(2000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1 Gi", "Gi", "1GB", "1Gi\n", "--1", "1.2.3"])
def test_parse_quantity_refuses_what_the_server_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [(2**30, "1Gi"), (256 * 2**20, "256Mi"), (1280 * 2**20, "1280Mi"), (1000, "1000"), (0, "0")],
)
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1500ms", timedelta(milliseconds=1500)),
        ("1m1m", timedelta(minutes=2)),  # Go sums repeated units
    ],
)
def test_parse_duration(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "15", "1d", "1.5h", "-1s", "15m\n", "99999999999h"])
def test_parse_duration_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
