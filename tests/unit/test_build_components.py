"""corral.cluster.build: which components the control plane's build makes."""

from __future__ import annotations

import pytest

from corral.cluster import build
from corral.cluster.versions import COMPONENTS, CONTROL_PLANE_COMPONENTS


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
