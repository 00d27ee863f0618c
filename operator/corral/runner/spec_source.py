"""The session spec as the pod sees it, re-read between messages.

The operator updates the pod's spec annotation when the AgentSession changes, and the
kubelet swaps the projected file (a new inode behind a symlink). Agents ask for a refresh
before each message; a file whose inode, size and mtime did not move is not read again.
A file that cannot be read or parsed keeps the last good spec, with a warning: a bad
edit never stops a running session.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from corral.api.units import parse_duration
from corral.api.v1alpha1 import AgentSessionSpec
from corral.runner.jsonlog import log_event
from corral.runner.session_file import SessionFileError, load_session

log = logging.getLogger("corral.runner.spec")

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)  # follows the kubelet's symlinks to the current file
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class SpecSource:
    def __init__(self, spec: AgentSessionSpec, path: Path | None = None) -> None:
        self.spec = spec
        self.path = path
        # Unknown until the first refresh, which then reads the file once.
        self._stamp: Stamp | None = None
        self._lock = threading.Lock()  # agents of a Shared session refresh from threads

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the spec it holds is different.
        Blocking (stat, read): call it from a thread."""
        if self.path is None:
            return False
        with self._lock:
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._stamp:
                return False
            try:
                spec = load_session(self.path).spec
            except SessionFileError as exc:
                log_event(
                    log,
                    "session file changed but is not valid; keeping the previous spec",
                    level=logging.WARNING,
                    error=str(exc)[:1000],
                )
                self._stamp = stamp  # warn once per version of the file
                return False
            self._stamp = stamp
            if spec == self.spec:
                return False
            self.spec = spec
        log_event(log, "session spec changed", path=str(self.path))
        return True

    def client_idle_seconds(self) -> float | None:
        """spec.clientIdleTimeout of the spec held now, in seconds (None: unset)."""
        value = self.spec.client_idle_timeout
        return parse_duration(value).total_seconds() if value else None
