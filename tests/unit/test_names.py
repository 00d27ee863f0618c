"""Child names and label values: valid, at most 63 characters, distinct per session."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.render.names import (
    DNS_1035_LABEL,
    HASHED_TAIL,
    LABEL_VALUE,
    dns_label,
    label_value,
    legacy_dns_label,
    legacy_label_value,
)
from strategies import session_names

SUFFIXES = ["", "-state", "-0123abcd"]


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


def test_a_name_cannot_be_picked_to_equal_another_sessions_hashed_name() -> None:
    # Issue 11: "web.app" is cleaned and hashed; a session named after the result took its
    # Service and NetworkPolicy names (the victim then ran without a policy of its own).
    hashed = dns_label("web.app")
    assert hashed.startswith("web-app-") and HASHED_TAIL.fullmatch(hashed[-9:])
    assert dns_label(hashed) != hashed
    assert dns_label(hashed, "-state") != dns_label("web.app", "-state")
    # The same for label values (selectors): a 63-character name against a long one.
    long_name = "a" * 70
    assert label_value(label_value(long_name)) != label_value(long_name)


# Names that differ only where cleaning changes them: "." against "-", or nothing.
_SEPARATORS = st.sampled_from([".", "-"])
_words = st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=8)


@st.composite
def look_alike_names(draw: st.DrawFn) -> tuple[str, str]:
    words = draw(_words)
    a = words[0] + "".join(draw(_SEPARATORS) + w for w in words[1:])
    b = words[0] + "".join(draw(_SEPARATORS) + w for w in words[1:])
    return a, b


@given(look_alike_names(), st.sampled_from(SUFFIXES))
def test_names_differing_only_in_cleaned_characters_stay_apart(
    names: tuple[str, str], suffix: str
) -> None:
    a, b = names
    if a != b:
        assert dns_label(a, suffix) != dns_label(b, suffix)
        assert label_value(a) != label_value(b)


@given(session_names, st.sampled_from(SUFFIXES))
def test_no_session_name_equals_another_sessions_derived_name(name: str, suffix: str) -> None:
    """Injective against the strongest choice: naming a session after another's child."""
    derived = dns_label(name, suffix)
    copycat = derived[: len(derived) - len(suffix)] if suffix else derived
    if copycat != name:
        assert dns_label(copycat, suffix) != derived
    value = label_value(name)
    if value != name:
        assert label_value(value) != value


@given(session_names, st.sampled_from(SUFFIXES))
def test_names_kept_before_are_kept(name: str, suffix: str) -> None:
    """An upgrade renames nothing but the names that could collide (ending like a hash)."""
    if not HASHED_TAIL.fullmatch(name[-9:]):
        assert dns_label(name, suffix) == legacy_dns_label(name, suffix)
    if not (len(name) == 63 and HASHED_TAIL.fullmatch(name[-9:])):
        assert label_value(name) == legacy_label_value(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("demo", "demo"),  # kept
        ("web.app", "web-app-"),  # hashed as before
        ("a" * 64, "a" * 54 + "-"),  # cut and hashed as before
    ],
)
def test_existing_names_do_not_move(name: str, expected: str) -> None:
    assert dns_label(name) == legacy_dns_label(name)
    assert dns_label(name).startswith(expected)
