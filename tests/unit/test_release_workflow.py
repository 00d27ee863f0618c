"""The release workflow (.github/workflows/release.yaml), which cannot run here: linted with
actionlint (built from its Go module into the cache, like the cluster's binaries), and
checked for what a release must do: both images for amd64 and arm64 from their recipes,
pushed with provenance, and the chart pushed as an OCI artifact with the tag as version and
appVersion."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from corral.cluster.versions import HELM_VERSION, Component

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
ACTIONLINT_VERSION = "v1.7.7"
ACTIONLINT = Component(
    name="actionlint",
    version=ACTIONLINT_VERSION,
    binaries=("actionlint",),
    install_package=f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}",
)


@cache
def actionlint() -> Path:
    from corral.cluster.build import build, component_dir, is_built

    if not is_built(ACTIONLINT):
        build(ACTIONLINT)
    return component_dir(ACTIONLINT) / "actionlint"


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def uses(job: str, action: str) -> dict[str, Any]:
    (step,) = [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]
    return step


def test_actionlint_finds_nothing() -> None:
    done = subprocess.run(
        [str(actionlint()), "-no-color", "-shellcheck=", "-pyflakes=", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_does_catch_a_broken_workflow(tmp_path: Path) -> None:
    # The check is real: an unknown key and a bad expression are reported.
    broken = WORKFLOW.read_text().replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04", 1)
    broken = broken.replace("${{ github.ref }}", "${{ github.ref ", 1)
    path = tmp_path / "release.yaml"
    path.write_text(broken)
    done = subprocess.run(
        [str(actionlint()), "-no-color", "-shellcheck=", "-pyflakes=", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert "runs_on" in done.stdout


def test_runs_on_version_tags_only() -> None:
    # PyYAML reads the bare key `on` as True.
    triggers = workflow()[True]
    assert list(triggers) == ["push"]
    assert triggers["push"] == {"tags": ["v[0-9]+.[0-9]+.[0-9]+*"]}


def test_both_images_multi_arch_with_provenance() -> None:
    job = workflow()["jobs"]["images"]
    assert job["strategy"]["matrix"]["image"] == ["operator", "runner"]
    build = uses("images", "docker/build-push-action")["with"]
    assert build["file"] == "images/${{ matrix.image }}/Dockerfile"
    assert build["context"] == "."
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert build["push"] is True
    assert build["provenance"] == "mode=max"
    assert build["sbom"] is True
    attest = uses("images", "actions/attest-build-provenance")["with"]
    assert attest["subject-digest"] == "${{ steps.build.outputs.digest }}"
    assert job["permissions"]["id-token"] == "write"
    assert job["permissions"]["attestations"] == "write"
    assert any(s.get("uses", "").startswith("docker/setup-qemu-action@") for s in job["steps"])


def test_chart_is_packaged_at_the_tag_and_pushed_as_oci() -> None:
    job = workflow()["jobs"]["chart"]
    assert set(job["needs"]) == {"version", "images"}
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert '--version "$VERSION" --app-version "$VERSION"' in script
    assert 'helm push "dist/corral-$VERSION.tgz" "oci://$REGISTRY/$CHART_REPOSITORY"' in script
    assert uses("chart", "actions/attest-build-provenance")["with"]["push-to-registry"] is True
    # The Helm the tests run against.
    assert workflow()["env"]["HELM_VERSION"] == HELM_VERSION


def test_the_tag_must_match_the_package_version() -> None:
    script = steps("version")[-1]["run"]
    assert 'version="${GITHUB_REF_NAME#v}"' in script
    assert "pyproject.toml" in script and "exit 1" in script
