"""Where each agent works and keeps its CLI state, derived from the pod's runtime contract."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from corral.api import runtime
from corral.api.v1alpha1 import AgentSessionSpec, Pattern
from corral.runner import early_cli

# The agent of every pattern but Shared (named where the runner's first step reads it).
MAIN_AGENT = early_cli.MAIN_AGENT
# Config dir relative to the state dir, as the pod lays it out ("claude").
CONFIG_SUBDIR = PurePosixPath(runtime.CLAUDE_CONFIG_DIR).relative_to(runtime.STATE_DIR)
# The runner's own files (saved session ids and totals) next to the CLI's in the state dir.
RUNNER_SUBDIR = early_cli.RUNNER_SUBDIR


@dataclass(frozen=True)
class AgentPaths:
    name: str
    cwd: Path
    config_dir: Path
    saved_file: Path


def agent_paths(spec: AgentSessionSpec, workspace: Path, state_dir: Path) -> list[AgentPaths]:
    """One entry per SDK client; Shared agents get their own subdirectories."""
    config_root = state_dir / CONFIG_SUBDIR
    runner_dir = state_dir / RUNNER_SUBDIR
    if spec.pattern != Pattern.SHARED or not spec.agents:
        return [
            AgentPaths(
                MAIN_AGENT,
                workspace,
                config_root,
                runner_dir / f"{MAIN_AGENT}.json",
            )
        ]
    return [
        AgentPaths(
            agent.name,
            workspace / agent.name,
            config_root / "agents" / agent.name,
            runner_dir / f"{agent.name}.json",
        )
        for agent in spec.agents
    ]


def prepare(paths: AgentPaths) -> list[tuple[Path, Path]]:
    """Make the agent's directories. The agent can write the workspace and the state dir:
    a file (or FIFO, or dangling link) where a directory belongs is moved aside, never
    deleted, rather than failing every start of the runner. Returns what was moved where."""
    moved: list[tuple[Path, Path]] = []
    for directory in (paths.cwd, paths.config_dir, paths.saved_file.parent):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next(p for p in (*reversed(directory.parents), directory) if _blocks(p))
            aside = blocker.with_name(f"{blocker.name}.not-a-directory-{os.getpid()}")
            blocker.rename(aside)
            moved.append((blocker, aside))
            directory.mkdir(parents=True, exist_ok=True)
    return moved


def _blocks(path: Path) -> bool:
    """Whether `path` is something other than a directory (or a link to one)."""
    return (path.exists() or path.is_symlink()) and not path.is_dir()
