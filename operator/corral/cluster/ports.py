"""Ports of the local control plane: chosen, then proven by the component's own bind.

A port that looks free when it is chosen can be taken a moment later by a neighbour (a
second cluster started at the same time in another state directory). So a choice is only
a guess: `control_plane.up` starts the component, and when its bind fails ("address
already in use") it chooses again. A port counts as ours only while our process holds the
listening socket (`listens`), never because something answers on it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from pathlib import Path

DEFAULT_PORTS = {
    "etcd-client": 2379,
    "etcd-peer": 2380,
    "apiserver": 6443,
    "controller-manager": 10257,
    "scheduler": 10259,
    "kwok": 10247,
}
# Preferred ports from a base (e.g. 30000: 30000..30005 in DEFAULT_PORTS' order), for
# running several clusters on one machine at known ports; taken ones are still replaced.
PORT_BASE_ENV = "CORRAL_CLUSTER_PORT_BASE"
# What Go's net package (etcd, Kubernetes, KWOK) prints when a listen loses the race.
BIND_FAILED = "address already in use"
_TCP_LISTEN = "0A"


def preferred_ports(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    base = environ.get(PORT_BASE_ENV, "").strip()
    if not base:
        return dict(DEFAULT_PORTS)
    if not base.isdigit() or not 1024 <= int(base) <= 65535 - len(DEFAULT_PORTS):
        raise ValueError(
            f"{PORT_BASE_ENV}={base!r} is not a port number from 1024 to "
            f"{65535 - len(DEFAULT_PORTS)}; unset it to use the default ports"
        )
    return {name: int(base) + index for index, name in enumerate(DEFAULT_PORTS)}


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` now (it may be taken right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port(avoid: Collection[int] = ()) -> int:
    """A port the kernel hands out as free, other than those in `avoid`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in avoid:
            return port


def choose_ports(preferred: Mapping[str, int] | None = None) -> dict[str, int]:
    """The preferred ports where free; another free port where something else listens."""
    chosen: dict[str, int] = {}
    for name, port in (preferred or preferred_ports()).items():
        if not port_free(port) or port in chosen.values():
            port = any_free_port(avoid=chosen.values())
        chosen[name] = port
    return chosen


def move(ports: dict[str, int], names: Collection[str]) -> dict[str, int]:
    """New free ports for `names` (their bind failed), none equal to a port in use."""
    moved = dict(ports)
    for name in names:
        moved[name] = any_free_port(avoid={*moved.values(), *ports.values()})
    return moved


def bind_failed(log_text: str) -> bool:
    return BIND_FAILED in log_text


def _listening_inodes(pid: int, port: int) -> set[str]:
    """Socket inodes listening on `port` in the network namespace of `pid`."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == _TCP_LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Process `pid` itself holds a socket listening on `port`."""
    inodes = _listening_inodes(pid, port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
