"""What the operator takes from a termination message (untrusted: written inside the pod)."""

from __future__ import annotations

import json

import pytest

from corral.controller.outcome import (
    DETAIL_MAX_CHARS,
    last_line,
    scrub,
    termination_detail,
)
from corral.controller.pods import Terminated


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("key sk-ant-api03-AAAAbbbb_cc-dd rejected", "AAAAbbbb"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGci"),
        ("401 with bearer abcdefgh12345 from the proxy", "abcdefgh12345"),
        ("x-api-key: abc123secret", "abc123secret"),
        ("api_key=hunter2hunter2", "hunter2"),
        ('{"password": "correct horse"}', "correct"),
        ("token " + "A1b2" * 12, "A1b2A1b2"),
    ],
)
def test_scrub_masks_what_looks_like_a_credential(text: str, hidden: str) -> None:
    cleaned = scrub(text)
    assert hidden not in cleaned
    assert "[redacted]" in cleaned


def test_scrub_keeps_ordinary_text_and_bounds_it() -> None:
    for plain in ("RuntimeError: connection refused (port 8080)", "basic auth is off"):
        assert scrub(plain) == plain
    cleaned = scrub("bell\x07 escape\x1b[31m nul\x00 line\u2028sep " + "word " * 500)
    assert len(cleaned) <= DETAIL_MAX_CHARS
    assert all(ch.isprintable() for ch in cleaned)
    assert cleaned.endswith("…")


def test_last_line_of_a_log_tail_and_of_a_runner_result() -> None:
    assert last_line("one\ntwo\n  three  \n\n\n") == "three"
    assert last_line("") == ""
    result = {"subtype": "error_runner", "text": "could not start\nClaude CLI not found"}
    assert last_line(json.dumps(result)) == "Claude CLI not found"


def test_termination_detail_names_the_memory_limit_of_an_oom_kill() -> None:
    detail = termination_detail(Terminated(137, "OOMKilled", ""), "768Mi")
    assert "OOMKilled" in detail and "768Mi" in detail and "spec.resources.memory" in detail


def test_termination_detail_of_an_error_is_its_exit_code_and_last_line() -> None:
    detail = termination_detail(Terminated(2, "Error", "a\nValueError: bad spec\n"), "1Gi")
    assert detail == "Error (exit code 2): ValueError: bad spec"
    assert termination_detail(Terminated(1, "", ""), "1Gi") == "Terminated (exit code 1)"
