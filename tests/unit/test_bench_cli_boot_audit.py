"""The CLI boot audit's plants: every one it names is written, and each marks its own file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import cli_boot_audit as audit


def _commands(node: object) -> list[str]:
    """Every planted shell command in a JSON document (hooks, settings, servers' `sh -c`)."""
    if isinstance(node, dict):
        return [c for value in node.values() for c in _commands(value)]
    if isinstance(node, list):
        return [c for item in node for c in _commands(item)]
    return [node] if isinstance(node, str) and node.startswith("touch ") else []


def test_every_vector_is_planted_at_every_scope_and_marks_its_own_file(tmp_path: Path) -> None:
    config, workspace, marks = tmp_path / "config", tmp_path / "workspace", tmp_path / "marks"
    for folder in (config, workspace, marks):
        folder.mkdir()
    audit.plant(config, workspace, marks, "http://127.0.0.1:9")
    documents = [
        config / "settings.json",
        config / ".claude.json",
        workspace / ".mcp.json",
        workspace / ".claude" / "settings.json",
        workspace / ".claude" / "settings.local.json",
    ]
    commands = [c for path in documents for c in _commands(json.loads(path.read_text()))]
    fsmonitor = subprocess.run(
        ["git", "-C", str(workspace), "config", "core.fsmonitor"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    commands.append(fsmonitor)
    for command in commands:
        subprocess.run(["sh", "-c", command.replace("; sleep 60", "")], check=True)
    names = set(p.name for p in marks.iterdir())
    assert len(names) == len(commands)  # one file per plant: a report names what ran
    for scope in ("user", "project", "local"):
        assert {f"{scope}-hook-{event}" for event in audit.HOOK_EVENTS} <= names
    assert {"mcp-user", "mcp-local", "mcp-project", "git-fsmonitor", "statusLine"} <= names
    assert set(audit.COMMAND_SETTINGS) <= names
