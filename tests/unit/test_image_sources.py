"""What the project images' cache key is computed from (corral.cluster.runner_image)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.cluster import runner_image


def test_building_the_wheel_does_not_change_the_sources_of_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fix: the wheel build writes operator/corral.egg-info, which was hashed into the
    key: the first build in a fresh tree was followed by a second, identical one."""
    for name in ("pyproject.toml", "README.md", "operator/corral/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(runner_image, "REPO", tmp_path)
    before = runner_image._wheel_sources()
    for by_product in ("corral.egg-info/PKG-INFO", "corral/__pycache__/x.cpython-311.pyc"):
        (tmp_path / "operator" / by_product).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "operator" / by_product).write_text("built")
    assert runner_image._wheel_sources() == before
    (tmp_path / "operator" / "corral" / "new.py").write_text("source")
    assert runner_image._wheel_sources() == [*before, tmp_path / "operator/corral/new.py"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (as the real node does)")
def test_a_killed_builds_mount_does_not_wedge_the_next_build(tmp_path: Path) -> None:
    """Fix: a debootstrap that was killed left its chroot's /proc mounted in the staging
    folder; removing the folder failed quietly and every later build stopped at mkdir."""
    staging = tmp_path / "base.partial"
    proc = staging / "rootfs" / "proc"
    proc.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(proc)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not let us mount: {mounted.stderr.strip()}")
    (proc / "held").write_text("x")
    try:
        runner_image._remove_staging(staging)
        assert not staging.exists()
    finally:
        subprocess.run(["umount", "--lazy", str(proc)], check=False, capture_output=True)
