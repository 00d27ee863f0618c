"""The suites' modules are imported by basename (no packages under tests/): two files of one
name in two suites make pytest refuse to collect the second ("import file mismatch")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_module_names_are_unique_across_suites() -> None:
    names = Counter(
        path.name for path in TESTS.rglob("*.py") if path.name not in {"conftest.py", "__init__.py"}
    )
    assert [name for name, count in names.items() if count > 1] == []
