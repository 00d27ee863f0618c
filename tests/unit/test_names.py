"""Child names and label values: valid, at most 63 characters, distinct per session."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.render.names import DNS_1035_LABEL, LABEL_VALUE, dns_label, label_value
from strategies import session_names


@pytest.mark.parametrize(
    ("name", "suffix", "expected"),
    [
        ("demo", "", "demo"),
        ("demo", "-state", "demo-state"),
        ("a" * 57, "-state", "a" * 57 + "-state"),
    ],
)
def test_valid_names_are_kept(name: str, suffix: str, expected: str) -> None:
    assert dns_label(name, suffix) == expected


@pytest.mark.parametrize("name", ["a" * 64, "my.session", "1st-session", "a" * 253, "x.y" * 50])
def test_names_that_cannot_be_kept_are_cut_and_hashed(name: str) -> None:
    label = dns_label(name, "-state")
    assert DNS_1035_LABEL.fullmatch(label) and len(label) <= 63
    assert label.endswith("-state")
    assert label != dns_label(name + "x", "-state")


def test_cleaning_cannot_merge_two_sessions() -> None:
    # "a.b" and "a-b" clean to the same text; the hash of the original keeps them apart.
    assert dns_label("a.b") != dns_label("a-b")
    assert label_value("a" * 64) != label_value("a" * 65)


@given(session_names, st.sampled_from(["", "-state", "-0123abcd"]))
def test_dns_label_is_always_valid(name: str, suffix: str) -> None:
    label = dns_label(name, suffix)
    assert len(label) <= 63
    assert DNS_1035_LABEL.fullmatch(label)
    assert label.endswith(suffix)


@given(session_names, session_names)
def test_distinct_sessions_get_distinct_names(a: str, b: str) -> None:
    if a != b:
        assert dns_label(a) != dns_label(b)
        assert label_value(a) != label_value(b)


@given(st.text(max_size=300))
def test_label_value_of_anything_is_valid(name: str) -> None:
    value = label_value(name)
    assert len(value) <= 63
    assert LABEL_VALUE.fullmatch(value)
