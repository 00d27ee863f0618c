"""Tear-down steps that finish whatever disappears under them.

While a node goes down its containers exit, and containerd, the shims and the kernel remove
cgroups, mounts and processes at the same time as we scan them. Every helper here takes
"already gone" as done, never as an error, so `down` always finishes and a second run
does what the first left (nothing, normally).

Processes are found by what they are, not only by the pid files `up` wrote: by network
namespace, by cgroup, and by a command line that names the cluster's state directory, so
a process whose pid file was lost or overwritten is stopped all the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

MNT_DETACH = 2


# --- directories and cgroups ----------------------------------------------------------------


def walk_dirs(root: Path) -> Iterator[Path]:
    """Directories under `root` (itself included), deepest first; a part that vanishes
    during the walk is skipped, never an error (os.walk ignores listing errors)."""
    for directory, _subdirs, _files in os.walk(root, topdown=False):
        yield Path(directory)


def read_pids(procs_file: Path) -> set[int]:
    try:
        text = procs_file.read_text()
    except OSError:
        return set()
    return {int(word) for word in text.split() if word.isdigit()}


def cgroup_pids(roots: Iterable[Path]) -> set[int]:
    """Every pid in the cgroup trees under `roots` (one per hierarchy)."""
    pids: set[int] = set()
    for root in roots:
        for directory in walk_dirs(root):
            pids |= read_pids(directory / "cgroup.procs")
    return pids


def remove_cgroups(roots: Iterable[Path]) -> list[Path]:
    """rmdir each cgroup deepest first; the ones still there (a process inside) are returned."""
    kept: list[Path] = []
    for root in roots:
        for directory in walk_dirs(root):
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                kept.append(directory)
    return [directory for directory in kept if directory.exists()]


# --- mounts ---------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: str) -> list[str]:
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def mounts_under(root: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points strictly below `root`, deepest first (a stacked one once per layer)."""
    if mountinfo is None:
        mountinfo = _read_mountinfo()
    prefixes = {str(root).rstrip("/") + "/", str(root.resolve()).rstrip("/") + "/"}
    under = [p for p in mount_points(mountinfo) if any(p.startswith(x) for x in prefixes)]
    return sorted(under, key=lambda p: p.count("/"), reverse=True)


def _read_mountinfo() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""


def unmount(point: str) -> None:
    """Detach `point` (lazily: a busy mount goes once its last user does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(point.encode(), MNT_DETACH)


def unmount_under(root: Path, passes: int = 5) -> list[str]:
    """Unmount everything below `root`; the mount points still there are returned."""
    for _ in range(passes):
        points = mounts_under(root)
        if not points:
            return []
        for point in points:
            unmount(point)
    return mounts_under(root)


def remove_tree(root: Path) -> list[str]:
    """Remove `root` and everything in it without ever crossing into a mount below it;
    what could not be removed is returned (nothing, unless a mount is still there)."""
    mounted = set(mounts_under(root))
    problems = [f"mount {point}" for point in sorted(mounted)]
    for directory, subdirs, files in os.walk(root, topdown=False):
        here = Path(directory)
        if any(str(here) == m or str(here).startswith(m + "/") for m in mounted):
            continue
        for name in files + [d for d in subdirs if (here / d).is_symlink()]:
            try:
                (here / name).unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                problems.append(f"{here / name}: {error.strerror}")
        if str(here) in mounted:
            continue
        try:
            here.rmdir()
        except FileNotFoundError:
            continue
        except OSError as error:
            if not mounted:
                problems.append(f"{here}: {error.strerror}")
    return problems


# --- processes ------------------------------------------------------------------------------


def all_pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def netns_of(pid: int) -> str | None:
    """The network namespace of `pid` as the kernel names it (`net:[inode]`)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def netns_id(path: Path) -> str | None:
    """The same name for a namespace file such as /run/netns/NAME."""
    try:
        return f"net:[{os.stat(path).st_ino}]"
    except OSError:
        return None


def pids_in_netns(ids: Iterable[str]) -> set[int]:
    wanted = set(ids)
    if not wanted:
        return set()
    return {pid for pid in all_pids() if netns_of(pid) in wanted}


def mentions(argv: list[str], root: Path) -> bool:
    """The command line names a path in `root` (a flag value or an argument)."""
    roots = {str(root).rstrip("/"), str(root.resolve()).rstrip("/")}
    return any(arg == r or f"{r}/" in arg or arg.endswith(f"={r}") for arg in argv for r in roots)


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def protected_pids() -> set[int]:
    """This process and its ancestors: a shell that runs `down` from inside the node's
    namespace must not be killed under it."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _reap(pid: int) -> None:
    """Collect `pid` if it is a child of this process (a component this process started)."""
    with contextlib.suppress(OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_until_gone(
    find: Callable[[], set[int]], timeout: float = 15.0, sig: int = signal.SIGKILL
) -> set[int]:
    """Signal what `find` returns until it returns nothing alive; what is left at the
    timeout is returned. New processes (a restart by a parent) are caught by the next find."""
    protected = protected_pids()
    deadline = time.monotonic() + timeout
    while True:
        found = find() - protected
        for pid in found:
            _reap(pid)
        alive = {pid for pid in found if _is_alive(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
        time.sleep(0.1)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def holds_unix_socket(pid: int, path: Path) -> bool:
    """Process `pid` holds the unix socket bound at `path` (seen from its namespace)."""
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    bound = {f[6] for f in (line.split() for line in lines) if len(f) > 7 and f[7] == str(path)}
    return bool(bound & _socket_inodes(pid))
