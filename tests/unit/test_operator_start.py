"""What the operator does with a config or kubeconfig it cannot use: one log line naming
the file, the key and the problem, and exit code 2 (not a traceback, not a half start)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from corral.controller.cli import load_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defaultIdleTimeout: fifteen\n", "defaultIdleTimeout: 'fifteen' is not a duration"),
        ("defaultIdleTimeout: 1m\nmaxStorage: lots\n", "maxStorage: String should match"),
        ("- a list\n", "(the whole file): Input should be a valid dictionary"),
        ("defaultModel: [\n", "while parsing a flow node"),
        ("activityKeyFile: /nonexistent/key\n", "No such file or directory"),
    ],
)
def test_a_config_it_cannot_use_is_one_line_naming_the_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="corral.operator"):
        assert load_config(path) is None
    (record,) = caplog.records
    assert record.getMessage().startswith(f"config {path} refused: ")
    assert expected in record.getMessage()


def test_a_config_it_can_use_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("defaultIdleTimeout: 5m\ndefaultBackgroundTaskTimeout: 2h\n")
    config = load_config(path)
    assert config is not None
    assert (config.default_idle_timeout, config.default_background_task_timeout) == ("5m", "2h")


@pytest.mark.parametrize(
    ("config", "kubeconfig", "expected"),
    [
        ("defaultIdleTimeout: fifteen\n", None, "defaultIdleTimeout: 'fifteen' is not"),
        ("", "/nonexistent/kubeconfig", "cannot read the kubeconfig /nonexistent/kubeconfig"),
    ],
)
def test_the_operator_exits_2_without_a_traceback(
    tmp_path: Path, config: str, kubeconfig: str | None, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    argv = [sys.executable, "-m", "corral.cli", "operator", f"--config={path}"]
    if kubeconfig:
        argv.append(f"--kubeconfig={kubeconfig}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert expected in output
    assert "Traceback" not in output
