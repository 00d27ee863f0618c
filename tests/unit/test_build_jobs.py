"""corral.cluster.build.ensure_built: which components it builds, and several at once."""

from __future__ import annotations

import threading

import pytest

from corral.cluster import build
from corral.cluster.versions import COMPONENTS, CONTROL_PLANE_COMPONENTS, Component


def test_builds_only_what_is_missing_two_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = CONTROL_PLANE_COMPONENTS[0]
    built: list[str] = []
    # Two builds must be running together to pass this barrier; one at a time, it breaks.
    together = threading.Barrier(2, timeout=10)

    def fake_build(component: Component, log: build.Log) -> None:
        if component.name in CONTROL_PLANE_COMPONENTS[1:3]:
            together.wait()
        built.append(component.name)

    monkeypatch.setattr(build, "is_built", lambda component: component.name == cached)
    monkeypatch.setattr(build, "build", fake_build)
    monkeypatch.delenv("CORRAL_BUILD_JOBS", raising=False)
    build.ensure_built()
    assert sorted(built) == sorted(CONTROL_PLANE_COMPONENTS[1:])
    assert len(CONTROL_PLANE_COMPONENTS) >= 3


def test_a_failed_build_is_raised_after_the_others_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    names = CONTROL_PLANE_COMPONENTS[:3]
    finished: list[str] = []

    def fake_build(component: Component, log: build.Log) -> None:
        if component.name == names[0]:
            raise build.BuildError(f"{component.key}: broken")
        finished.append(component.name)

    monkeypatch.setattr(build, "is_built", lambda component: False)
    monkeypatch.setattr(build, "build", fake_build)
    with pytest.raises(build.BuildError, match="broken"):
        build.ensure_built(names)
    assert sorted(finished) == sorted(names[1:])


def test_one_job_builds_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(build, "is_built", lambda component: False)
    monkeypatch.setattr(build, "build", lambda component, log: order.append(component.name))
    monkeypatch.setenv("CORRAL_BUILD_JOBS", "1")
    build.ensure_built()
    assert order == list(CONTROL_PLANE_COMPONENTS)


def test_a_bad_job_count_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_BUILD_JOBS", "many")
    with pytest.raises(build.BuildError, match="CORRAL_BUILD_JOBS must be a whole number"):
        build.build_jobs()


def test_the_kubelet_builds_with_the_node_not_before_the_first_test() -> None:
    # The control plane's build is what every suite waits for; the kubelet is the real
    # node's (built in the background), in an entry of its own.
    control_plane = {b for n in CONTROL_PLANE_COMPONENTS for b in COMPONENTS[n].binaries}
    assert "kubelet" not in control_plane and "kubectl" in control_plane
    assert build.binary_path("kubelet").parent.name == COMPONENTS["kubelet"].key
