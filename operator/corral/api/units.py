"""Kubernetes quantities and Go durations, parsed the way the API server's CEL does.

The CRD checks `quantity(...)` and `duration(...)` on the server; the models repeat the same
checks in Python (and the operator computes with the values), so both sides must agree on
what a string means.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from decimal import Decimal

# Kubernetes resource.Quantity, as the API server's own schema accepts it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Go duration made of whole units, e.g. "90s", "15m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"

_QUANTITY = re.compile(QUANTITY_PATTERN)
_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
# Go's time.Duration is an int64 of nanoseconds; CEL's duration() fails beyond it.
_MAX_DURATION_NS = 2**63 - 1


# Remembered: the operator reads the same few quantities (a pod's CPU limit, a spec's
# memory) on every watch event and decision. Decimals are immutable; errors are not kept.
@functools.lru_cache(maxsize=1024)
def parse_quantity(text: str) -> Decimal:
    """The value of a quantity string (`500m` -> 0.5, `1Gi` -> 1073741824)."""
    if not _QUANTITY.fullmatch(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    match = _NUMBER.match(text)
    assert match is not None  # the pattern above guarantees a leading number
    number, suffix = match.groups()
    if suffix in _SUFFIXES:
        return Decimal(number) * _SUFFIXES[suffix]
    return Decimal(number + suffix)  # a decimal exponent such as 1e3


def format_bytes(value: Decimal | int) -> str:
    """Whole bytes as the shortest binary-suffixed quantity that is exact (`268435456` -> 256Mi)."""
    amount = int(value)
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if amount >= unit and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def parse_duration(text: str) -> timedelta:
    """A duration such as `1h30m` (whole units only, as DURATION_PATTERN allows)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h30m)")
    millis = sum(int(n) * _DURATION_UNIT_MS[unit] for n, unit in _DURATION_PART.findall(text))
    if millis * 1_000_000 > _MAX_DURATION_NS:
        raise ValueError(f"{text!r} is longer than the longest duration (about 292 years)")
    return timedelta(milliseconds=millis)
