"""The image recipes (images/runner, images/operator) agree with the runtime contract, the
chart, pyproject.toml and the tested SDK version."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import claude_agent_sdk
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from corral.api import runtime
from corral.cluster import runner_image

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
RUNNER = IMAGES / "runner"
OPERATOR = IMAGES / "operator"
CHART = ROOT / "helm" / "corral"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def dockerfile(recipe: Path = RUNNER) -> str:
    return (recipe / "Dockerfile").read_text()


def test_runner_entrypoint_is_tini_and_its_command_uses_the_runtime_paths_and_port() -> None:
    recipe = runner_image.read_recipe(RUNNER / "Dockerfile")
    assert recipe.entrypoint == list(runtime.IMAGE_ENTRYPOINT)
    argv = recipe.cmd
    assert argv[:2] == ["corral", "runner"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags == {
        "--session": runtime.SPEC_FILE,
        "--workspace": runtime.WORKSPACE_DIR,
        "--state-dir": runtime.STATE_DIR,
        "--port": str(runtime.RUNNER_PORT),
    }


def test_runner_user_home_and_port_match_the_contract() -> None:
    text = dockerfile()
    recipe = runner_image.read_recipe(RUNNER / "Dockerfile")
    assert recipe.user == f"{runtime.RUNNER_UID}:{runtime.RUNNER_GID}"
    assert recipe.env["HOME"] == runtime.HOME_DIR
    assert recipe.exposed == [str(runtime.RUNNER_PORT)]
    for directory in (runtime.HOME_DIR, runtime.STATE_DIR, runtime.SPEC_DIR):
        assert directory in text


def test_operator_image_runs_corral_under_tini_with_the_operator_as_default() -> None:
    recipe = runner_image.read_recipe(OPERATOR / "Dockerfile")
    # Generic: tini + `corral`; the subcommand (operator, later gateway) is the argument.
    assert recipe.entrypoint == [*runtime.IMAGE_ENTRYPOINT, "corral"]
    assert recipe.cmd == ["operator"]
    assert recipe.user == f"{runtime.OPERATOR_UID}:{runtime.OPERATOR_GID}"
    assert recipe.exposed == [str(runtime.OPERATOR_PORT)]
    assert recipe.packages == ["tini"]
    assert recipe.env["PATH"].startswith(f"{runner_image.VENV}/bin:")


def test_operator_port_is_the_operator_cli_default_and_the_chart_port() -> None:
    from corral.cli import build_parser

    args = build_parser(["operator"]).parse_args(["operator"])
    assert args.port == runtime.OPERATOR_PORT
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["port"] == runtime.OPERATOR_PORT
    assert values["securityContext"] == {
        "runAsUser": runtime.OPERATOR_UID,
        "runAsGroup": runtime.OPERATOR_GID,
    }


@pytest.mark.parametrize("recipe", [RUNNER, OPERATOR], ids=["runner", "operator"])
def test_bases_are_glibc_debian_slim_python_311_pinned_by_digest(recipe: Path) -> None:
    parsed = runner_image.read_recipe(recipe / "Dockerfile")
    assert parsed.base_image.startswith("python:3.11-slim-bookworm@")
    assert DIGEST.search(parsed.base_image), parsed.base_image
    assert parsed.suite == "bookworm"
    assert "alpine" not in dockerfile(recipe).lower()
    # Every FROM is the pinned ARG, never a bare tag.
    for line in dockerfile(recipe).splitlines():
        if line.startswith("FROM "):
            assert line.split()[1] == "${PYTHON_IMAGE}", line


def test_both_images_use_the_same_base() -> None:
    runner = runner_image.read_recipe(RUNNER / "Dockerfile")
    operator = runner_image.read_recipe(OPERATOR / "Dockerfile")
    assert runner.base_image == operator.base_image


def _pins() -> dict[str, str]:
    lines = (IMAGES / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {canonicalize_name(name): version.strip() for name, version in pairs}


def _runtime_closure() -> set[str]:
    """Every distribution corral needs at run time (no extras), from the installed metadata."""
    seen: set[str] = set()
    todo = ["corral"]
    while todo:
        name = todo.pop()
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def test_the_images_pin_the_sdk_the_tests_run_against() -> None:
    assert _pins()["claude-agent-sdk"] == claude_agent_sdk.__version__


def test_every_runtime_dependency_is_pinned_and_installed_at_its_pin() -> None:
    # Fails on a dependency added to pyproject.toml without `hack/lock.py`, and on a venv
    # installed without the constraints (the tests would not run what the images ship).
    pins = _pins()
    needed = _runtime_closure()
    assert needed - set(pins) == set(), "run hack/lock.py"
    installed = {name: importlib.metadata.version(name) for name in needed}
    assert {name: pins[name] for name in needed} == installed


def _requirements(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


# Not in the operator image: the runner's SDK and cron parser, the kubernetes client (the
# tests' and the local cluster's), the local cluster's certificates, and the terminal
# libraries of the user CLI.
NOT_IN_OPERATOR_IMAGE = (
    "claude-agent-sdk",
    "cronsim",
    "kubernetes",
    "cryptography",
    "rich",
    "prompt_toolkit",
)


def test_operator_requirements_are_pyproject_minus_the_sdk_and_cluster_tooling() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    without = [d for d in declared if not d.startswith(NOT_IN_OPERATOR_IMAGE)]
    assert _requirements((OPERATOR / "requirements.txt").read_text()) == without


def test_the_operator_never_imports_what_its_image_leaves_out() -> None:
    """`corral operator` imports, and renders a session's children, in a Python that cannot
    import what the image leaves out; kopf then finds no kubernetes client either."""
    import subprocess
    import sys

    blocked = [
        "claude_agent_sdk",
        "cronsim",
        "kubernetes",
        "cryptography",
        "rich",
        "prompt_toolkit",
    ]
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {blocked!r}):
            raise ImportError("not in the operator image: " + name)
sys.meta_path.insert(0, Block())
import kopf
import corral.controller.handlers, corral.controller.controller, corral.controller.http
import corral.kube.client, corral.config
import corral.gateway.server, corral.gateway.auth, corral.gateway.directory
from corral.api.v1alpha1 import AgentSession
from corral.cli import build_parser
from corral.config import OperatorConfig
from corral.render import render_children
build_parser(["operator"]).parse_args(["operator"])
build_parser(["gateway"]).parse_args(["gateway", "--key-file", "/k"])
session = AgentSession.model_validate(
    {{"metadata": {{"name": "s", "namespace": "n", "uid": "u"}}, "spec": {{"pattern": "Hybrid"}}}}
)
assert len(render_children(session, OperatorConfig(), attempt=1).all()) == 4
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_chart_defaults_are_the_published_images_at_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    assert f"{values['image']['repository']}:{chart['appVersion']}" == (
        runtime.DEFAULT_OPERATOR_IMAGE
    )
    runner = values["runnerImage"]
    assert f"{runner['repository']}:{chart['appVersion']}" == runtime.DEFAULT_RUNNER_IMAGE
    assert "defaultImage" not in (values["config"] or {})


def test_release_workflow_publishes_the_chart_defaults() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
    env = workflow["env"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    registry = env["REGISTRY"]
    assert f"{registry}/{env['OPERATOR_IMAGE']}" == values["image"]["repository"]
    assert f"{registry}/{env['RUNNER_IMAGE']}" == values["runnerImage"]["repository"]
    images = workflow["jobs"]["images"]["strategy"]["matrix"]["image"]
    assert sorted(images) == [env["OPERATOR_IMAGE"], env["RUNNER_IMAGE"]]
    for image in images:
        assert (IMAGES / image / "Dockerfile").is_file()


def _rendered_default_image(*sets: str) -> str:
    import subprocess

    from corral.cluster.build import binary_path, ensure_built

    ensure_built(["helm"])
    argv = [str(binary_path("helm")), "template", "corral", str(CHART), "-n", "corral-system"]
    for item in sets:
        argv += ["--set", item]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    for doc in yaml.safe_load_all(out):
        if doc and doc["kind"] == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
            return str(yaml.safe_load(doc["data"]["config.yaml"])["defaultImage"])
    raise AssertionError("no operator ConfigMap rendered")


def test_the_runner_image_follows_runner_image_values_unless_config_sets_it() -> None:
    assert _rendered_default_image() == runtime.DEFAULT_RUNNER_IMAGE
    assert _rendered_default_image("runnerImage.tag=1.2.3") == "corral.dev/runner:1.2.3"
    assert (
        _rendered_default_image("runnerImage.tag=1.2.3", "config.defaultImage=mine:4") == "mine:4"
    )
