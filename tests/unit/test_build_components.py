"""corral.cluster.build: which components the control plane's build makes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import build
from corral.cluster.versions import COMPONENTS, CONTROL_PLANE_COMPONENTS, Component


def test_builds_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = CONTROL_PLANE_COMPONENTS[0]
    built: list[str] = []
    monkeypatch.setattr(build, "is_built", lambda component: component.name == cached)
    monkeypatch.setattr(build, "build", lambda component, log: built.append(component.name))
    build.ensure_built()
    assert built == list(CONTROL_PLANE_COMPONENTS[1:])


def test_the_kubelet_builds_with_the_node_not_before_the_first_test() -> None:
    # The control plane's build is what every suite waits for; the kubelet is the real
    # node's (built in the background), in an entry of its own.
    control_plane = {b for n in CONTROL_PLANE_COMPONENTS for b in COMPONENTS[n].binaries}
    assert "kubelet" not in control_plane and "kubectl" in control_plane
    assert build.binary_path("kubelet").parent.name == COMPONENTS["kubelet"].key


def test_two_setups_at_once_build_a_component_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two checkouts set up on one machine at once both built Kubernetes into the same
    staging folder; the first to finish took it away and the second failed with "the build
    finished but produced no kube-apiserver". Now the second waits and uses the first's."""
    monkeypatch.setenv("CORRAL_CACHE_DIR", str(tmp_path))
    component = COMPONENTS["helm"]
    builds: list[str] = []

    def slow_build(component: Component, log: Any) -> None:
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # both setups are past their "is it built?" check by now
        final = build.component_dir(component)
        final.mkdir(parents=True)
        sizes = {}
        for name in component.binaries:
            (final / name).write_bytes(b"binary")
            sizes[name] = 6
        (final / build.MARKER).write_text(json.dumps({"binaries": sizes}))

    monkeypatch.setattr(build, "build", slow_build)
    lines: list[str] = []
    setups = [
        threading.Thread(target=build.ensure_built, args=(["helm"], lines.append), name=n)
        for n in ("first", "second")
    ]
    for setup in setups:
        setup.start()
    for setup in setups:
        setup.join(10)
    assert len(builds) == 1, builds
    assert build.is_built(component)
    assert any("another process on this machine is building it" in line for line in lines)
