"""The launch record of corral.runner.early_cli: what it keeps, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.runner.early_cli import (
    MAX_RECORD_BYTES,
    RECORD_FILE,
    EarlyClis,
    Launch,
    bundled_cli,
    read_record,
    spec_agents,
)

BASE = {"HOME": "/home/agent", "PATH": "/usr/bin", "CLAUDECODE": "1", "SECRET_TOKEN": "s3cr3t"}


def _cli() -> str:
    cli = bundled_cli()
    assert cli is not None
    return cli


def test_a_launch_keeps_only_the_difference_from_the_runners_environment() -> None:
    env = {k: v for k, v in BASE.items() if k != "CLAUDECODE"}
    env |= {"CLAUDE_CONFIG_DIR": "/session/claude", "PWD": "/workspace", "PATH": "/usr/bin"}
    launch = Launch.of([_cli(), "--verbose"], env, "/workspace", BASE)
    assert launch.set == {"CLAUDE_CONFIG_DIR": "/session/claude", "PWD": "/workspace"}
    assert launch.unset == {"CLAUDECODE"}
    assert "s3cr3t" not in json.dumps(launch.to_json())
    assert launch.env(BASE) == env
    assert launch.recordable()
    assert Launch.from_json(json.loads(json.dumps(launch.to_json())), _cli()) == launch


def test_remember_keeps_other_agents_and_forgets_what_it_may_not_record(tmp_path: Path) -> None:
    clis = EarlyClis(tmp_path / RECORD_FILE)
    first = Launch((_cli(), "--model", "a"), "/w/a", {"PWD": "/w/a"}, frozenset())
    second = Launch((_cli(), "--model", "b"), "/w/b", {"PWD": "/w/b"}, frozenset())
    clis.remember("a", first)
    clis.remember("b", second)
    assert read_record(clis.record, _cli()) == {"a": first, "b": second}
    # The in-process fake API's URL is an ANTHROPIC_* variable: such a launch is not kept.
    fake_api = Launch(first.argv, "/w/a", {"ANTHROPIC_BASE_URL": "http://x"}, frozenset())
    clis.remember("a", fake_api)
    assert read_record(clis.record, _cli()) == {"b": second}
    assert not clis.notes


@pytest.mark.parametrize(
    ("launch", "error"),
    [
        ({"argv": ["/bin/sh"], "cwd": "/w", "set": {}, "unset": []}, "bundled CLI"),
        ({"argv": [], "cwd": "/w", "set": {}, "unset": []}, "non-empty list"),
        ({"argv": ["CLI"], "cwd": "w", "set": {}, "unset": []}, "absolute path"),
        ({"argv": ["CLI"], "cwd": "/w", "set": {"NODE_OPTIONS": "x"}, "unset": []}, "CLAUDE*"),
        ({"argv": ["CLI"], "cwd": "/w", "set": {}, "unset": ["HTTPS_PROXY"]}, "CLAUDE*"),
        ({"argv": ["CLI"], "cwd": "/w", "set": {"PWD": 1}, "unset": []}, "strings to strings"),
        ({"argv": ["CLI"], "cwd": "/w", "set": {}}, "exactly argv"),
    ],
)
def test_a_record_is_refused_naming_what_is_wrong(
    tmp_path: Path, launch: dict[str, object], error: str
) -> None:
    path = tmp_path / "record.json"
    launch = {
        k: [_cli() if a == "CLI" else a for a in v] if k == "argv" else v for k, v in launch.items()
    }  # type: ignore[union-attr]
    path.write_text(json.dumps({"version": 1, "agents": {"main": launch}}))
    with pytest.raises(ValueError, match=r"agents\.main: .*" + error.replace("*", r"\*")):
        read_record(path, _cli())


def test_an_oversized_or_unversioned_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"version": 1, "agents": {}, "pad": "x" * MAX_RECORD_BYTES}))
    with pytest.raises(ValueError, match="larger than"):
        read_record(path, _cli())
    path.write_text(json.dumps({"agents": {}}))
    with pytest.raises(ValueError, match="version-1"):
        read_record(path, _cli())
    assert read_record(tmp_path / "missing.json", _cli()) == {}


@pytest.mark.parametrize(
    ("body", "agents"),
    [
        ({"pattern": "Hybrid"}, {"main"}),
        ({"pattern": "Shared", "agents": [{"name": "a"}, {"name": "b"}]}, {"a", "b"}),
        ({"kind": "AgentSession", "spec": {"pattern": "Shared", "agents": [{"name": "x"}]}}, {"x"}),
        ([1, 2], set()),
    ],
)
def test_only_the_agents_the_session_file_names_start_early(
    tmp_path: Path, body: object, agents: set[str]
) -> None:
    spec = tmp_path / "session.json"
    spec.write_text(json.dumps(body))
    assert spec_agents(spec) == agents
    spec.write_text("pattern: Hybrid\n")  # not JSON: nothing is started early
    assert spec_agents(spec) == set()
