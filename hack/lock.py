"""Re-pin images/constraints.txt: every runtime dependency of corral at one exact version.

    .venv/bin/python hack/lock.py            # then: bash hack/setup.sh (reinstalls the venv)
    .venv/bin/python hack/lock.py --sdk 0.2.190

Both images and the dev venv install with these constraints, so the tests, the benchmarks
and the images run the same packages (unpinned, the operator's memory moved by a megabyte
between two sessions with no change of Corral's). pip resolves the versions: `.` for which
packages ship, `.[dev]` for their versions (so the dev tools never conflict with a pin).
The Agent SDK, and with it the bundled CLI, moves only when `--sdk` says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "images" / "constraints.txt"
SDK = "claude-agent-sdk"
HEADER = """\
# Exact versions of every runtime dependency of corral: both images and the dev venv install
# with these constraints (hack/setup.sh), so tests and benchmarks run what ships. Written by
# hack/lock.py; tests/runner/test_image_recipe.py fails when the venv or pyproject drifts.
"""


def resolve(target: str, constraints: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run"]
        command += ["--ignore-installed", "--report", str(report), "-c", str(constraints)]
        subprocess.run([*command, target], cwd=ROOT, check=True)
        installs = json.loads(report.read_text())["install"]
    versions = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in installs
    }
    versions.pop("corral", None)
    return versions


def current_sdk() -> str:
    for line in LOCK.read_text().splitlines():
        if line.startswith(f"{SDK}=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{LOCK} pins no {SDK}: pass --sdk VERSION")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sdk", help=f"the {SDK} version to pin (default: the current pin)")
    args = parser.parse_args()
    sdk = args.sdk or current_sdk()
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pin:
        pin.write(f"{SDK}=={sdk}\n")
        pin.flush()
        shipped = resolve(".", Path(pin.name))
        versions = resolve(".[dev]", Path(pin.name))
    lines = [f"{name}=={versions.get(name, shipped[name])}" for name in sorted(shipped)]
    LOCK.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(lines)} packages, {SDK}=={sdk}")


if __name__ == "__main__":
    main()
