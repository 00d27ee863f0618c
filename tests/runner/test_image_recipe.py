"""The runner image recipe agrees with the runtime contract and the tested SDK version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import claude_agent_sdk

from corral.api import runtime

RECIPE = Path(__file__).resolve().parents[2] / "images" / "runner"


def dockerfile() -> str:
    return (RECIPE / "Dockerfile").read_text()


def test_entrypoint_uses_the_runtime_paths_and_port() -> None:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile(), re.MULTILINE)
    assert match, "exec-form ENTRYPOINT"
    argv = json.loads(match.group(1))
    assert argv[:4] == ["/usr/bin/tini", "--", "corral", "runner"]
    flags = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert flags == {
        "--session": runtime.SPEC_FILE,
        "--workspace": runtime.WORKSPACE_DIR,
        "--state-dir": runtime.STATE_DIR,
        "--port": str(runtime.RUNNER_PORT),
    }


def test_user_home_and_port_match_the_contract() -> None:
    text = dockerfile()
    assert f"ARG RUNNER_UID={runtime.RUNNER_UID}\n" in text
    assert f"ARG RUNNER_GID={runtime.RUNNER_GID}\n" in text
    assert "USER ${RUNNER_UID}:${RUNNER_GID}" in text
    assert f"HOME={runtime.HOME_DIR}" in text
    assert f"EXPOSE {runtime.RUNNER_PORT}\n" in text
    for directory in (runtime.HOME_DIR, runtime.STATE_DIR, runtime.SPEC_DIR):
        assert directory in text


def test_base_is_glibc_debian_slim_python_311() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim-" in dockerfile()
    assert "alpine" not in dockerfile().lower()


def test_the_image_pins_the_sdk_the_tests_run_against() -> None:
    pins = dict(
        line.split("==")
        for line in (RECIPE / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["claude-agent-sdk"] == claude_agent_sdk.__version__
