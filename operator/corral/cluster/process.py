"""Start, find and stop the cluster's background processes through pid files.

A pid file alone could name a recycled pid; a process counts as ours only when its
command line still starts with the binary we launched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNET = 0x40000000


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def running_pid(pid_file: Path, binary: str) -> int | None:
    """The pid in `pid_file` if that process is alive and runs `binary`."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if not argv or argv[0] != binary or _is_zombie(pid):
        return None
    return pid


def _enter_netns(fd: int) -> Callable[[], None]:
    """A pre-exec hook moving the child into the network namespace open as `fd`.

    Everything it needs is prepared before the fork: the child only makes one call.
    """
    setns = ctypes.CDLL(None, use_errno=True).setns

    def enter() -> None:
        if setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the node's network namespace")

    return enter


def start(
    argv: list[str],
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
    netns: Path | None = None,
) -> int:
    """Launch detached (own session, survives the caller), logging to `log_file`.

    With `netns` (a path such as /run/netns/NAME) the process runs in that network
    namespace; it keeps every other namespace of the caller.
    """
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    netns_fd = os.open(netns, os.O_RDONLY) if netns is not None else None
    try:
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                preexec_fn=_enter_netns(netns_fd) if netns_fd is not None else None,
            )
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
    pid_file.write_text(str(proc.pid))
    # Between fork and exec the child still shows Python's command line; wait for the exec
    # so that `running_pid` recognises it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _cmdline(proc.pid)[:1] != argv[:1]:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    return proc.pid


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile: what we wanted
        os.kill(pid, sig)


def stop(pid_file: Path, binary: str, grace_seconds: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after the grace period. True if a process was stopped."""
    pid = running_pid(pid_file, binary)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and running_pid(pid_file, binary) is not None:
        time.sleep(0.1)
    if running_pid(pid_file, binary) is not None:
        _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and running_pid(pid_file, binary) is not None:
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return True


def log_tail(log_file: Path, lines: int = 20) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
