"""The files under docs/measurements/, rewritten by the tests that measure them.

A test run should leave a checkout as it found it, so a file is rewritten only when asked
(CORRAL_RECORD_MEASUREMENTS=1, then commit the result); otherwise the report is only
printed, which `pytest -s` shows. Import this from `measurement_docs`.
"""

from __future__ import annotations

import os
from pathlib import Path

RECORD_ENV = "CORRAL_RECORD_MEASUREMENTS"


def recording() -> bool:
    return os.environ.get(RECORD_ENV, "") in ("1", "true", "yes")


def record(path: Path, text: str) -> None:
    """Print a measurement's report, and write it to `path` when recording."""
    print("\n" + text)
    if recording():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
