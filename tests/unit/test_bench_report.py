"""docs/benchmarks.md says how it was made without the measuring machine's paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
report = pytest.importorskip("bench.report")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/srv/build/corral/bench/run.py", "python -m bench.run"),
        (
            "/srv/build/corral/bench/run.py --only idle --idle 5000 --merge",
            "python -m bench.run --only idle --idle 5000 --merge",
        ),
        (
            "/usr/bin/python3 /srv/build/corral/bench/run.py --out /srv/build/corral/docs/r.json",
            "python3 bench/run.py --out docs/r.json",
        ),
    ],
)
def test_command_is_relative_to_the_repository(command: str, expected: str) -> None:
    assert report.repo_command(command, "/srv/build/corral") == expected


def test_command_measured_in_another_checkout() -> None:
    # raw.json from a clone elsewhere, the report written from this one.
    assert report.repo_command("/work/main/bench/run.py --merge") == "python -m bench.run --merge"


def test_command_line_has_no_absolute_path() -> None:
    results = {
        "command": "/home/someone/corral/bench/run.py",
        "follow_ups": ["/home/someone/corral/bench/run.py --only idle --merge"],
    }
    assert report.command_line(results) == (
        "Command: `python -m bench.run`; follow-up: `python -m bench.run --only idle --merge`"
    )


def test_current_benchmarks_doc_has_no_absolute_command() -> None:
    text = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    [line] = [line for line in text.splitlines() if line.startswith("Command:")]
    assert "`/" not in line and "python -m bench.run" in line


def test_this_command_keeps_a_note_with_an_apostrophe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fix: a bench joined its argv with spaces, and the report's shlex.split of a note like
    # this one raised "No closing quotation" after the benchmark's last run.
    argv = [str(REPO / "bench" / "run.py"), "--note", "the operator's own run"]
    monkeypatch.setattr(sys, "argv", argv)
    assert report.this_command() == "python -m bench.run --note 'the operator'\"'\"'s own run'"


def test_a_tree_outside_the_repository_is_named_by_its_label() -> None:
    command = (
        "/srv/build/corral/bench/operator_footprint.py --sessions 1000"
        " --tree old=/scratch/snap-1/operator --tree new=/srv/build/corral/operator"
        " --out=/srv/build/corral/docs/r.json"
    )
    assert report.repo_command(command, "/srv/build/corral") == (
        "bench/operator_footprint.py --sessions 1000"
        " --tree 'old=<old>/operator' --tree new=operator --out=docs/r.json"
    )
