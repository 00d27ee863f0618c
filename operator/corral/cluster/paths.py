"""Where the cluster keeps its build cache and its runtime state.

The build cache is outside the repo and keyed by component version, so a clean clone
reuses binaries built earlier on the same machine and rebuilds when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of built binaries: $CORRAL_CACHE_DIR, else $XDG_CACHE_HOME/corral."""
    explicit = os.environ.get("CORRAL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "corral"


def state_dir() -> Path:
    """Runtime state of the local cluster (certs, etcd data, logs, pids)."""
    explicit = os.environ.get("CORRAL_STATE_DIR")
    if explicit:
        # Absolute and normalised: the kubelet refuses relative paths, and processes are
        # found again by the paths on their command lines.
        return Path(os.path.abspath(explicit))
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "corral" / "cluster"
