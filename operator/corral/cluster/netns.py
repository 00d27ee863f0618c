"""Network namespaces for the real node, made and removed with iproute2.

Two namespaces per node, both named after the cluster's state directory so that two
clusters on one machine never share one:

* the node's: loopback (with the node's address on it) and, once the first pod starts,
  the CNI bridge of the pods. It has no route out: a pod's packet for any address the
  project did not create finds no route and never leaves.
* the "outside" one, joined to the node by a veth pair: test hosts and decoys live there
  (a fake Anthropic API, a server on a private address, one on the metadata address).

Nothing is changed in the host's own namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has its output."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (e.g. net.ipv4.ip_forward) inside namespace `name`."""
    with inside(path(name)):
        Path("/proc/sys", *key.split(".")).write_text(value)


@contextlib.contextmanager
def inside(netns: Path) -> Iterator[None]:
    """Run the block with the calling thread in `netns` (sockets made there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the caller's namespace")
    finally:
        os.close(target)
        os.close(home)


def connect(netns: Path, host: str, port: int, timeout: float = 2.0) -> socket.socket:
    """A TCP connection made from inside `netns`."""
    with inside(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def http_status(netns: Path, host: str, port: int, path_: str = "/healthz") -> int | None:
    """Status of a plain-HTTP GET made from inside `netns`; None when nothing answers."""
    try:
        with connect(netns, host, port) as sock:
            sock.sendall(f"GET {path_} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = sock.recv(64).decode(errors="replace")
    except OSError:
        return None
    parts = head.split(" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


@dataclass(frozen=True)
class Wiring:
    """The addresses of one node's namespaces."""

    node_netns: str
    outside_netns: str
    node_ip: str  # on the node's loopback: the kubelet's node IP, the API server's address
    pod_cidr: str
    link_cidr: str  # the node<->outside veth subnet
    node_link_ip: str
    outside_ip: str  # the outside namespace's main address
    outside_extra_ips: tuple[str, ...]  # more addresses of the outside namespace (decoys)

    @property
    def link_prefix(self) -> int:
        return int(self.link_cidr.split("/")[1])


def create(w: Wiring) -> None:
    """Make both namespaces and the link between them (idempotent)."""
    for name in (w.node_netns, w.outside_netns):
        if not exists(name):
            ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
    node, outside = w.node_netns, w.outside_netns
    if ip("-n", node, "addr", "show", "dev", "lo", "to", f"{w.node_ip}/32").stdout.strip() == "":
        ip("-n", node, "addr", "add", f"{w.node_ip}/32", "dev", "lo")
    if ip("-n", node, "link", "show", "outside0", check=False).returncode != 0:
        # Made in the node's namespace, then one end moved: nothing touches the host's.
        ip("-n", node, "link", "add", "outside0", "type", "veth", "peer", "name", "eth0")
        ip("-n", node, "link", "set", "eth0", "netns", outside)
        ip("-n", node, "addr", "add", f"{w.node_link_ip}/{w.link_prefix}", "dev", "outside0")
        ip("-n", outside, "addr", "add", f"{w.outside_ip}/{w.link_prefix}", "dev", "eth0")
        for extra in w.outside_extra_ips:
            ip("-n", outside, "addr", "add", f"{extra}/32", "dev", "eth0")
        ip("-n", node, "link", "set", "outside0", "up")
        ip("-n", outside, "link", "set", "eth0", "up")
        for extra in w.outside_extra_ips:
            if not _in_cidr(extra, w.link_cidr):
                ip("-n", node, "route", "add", f"{extra}/32", "via", w.outside_ip)
        # Replies go back through the node; the outside namespace has no default route.
        ip("-n", outside, "route", "add", w.pod_cidr, "via", w.node_link_ip)
    sysctl(node, "net.ipv4.ip_forward", "1")
    bridge_nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    with inside(path(node)):
        if bridge_nf.exists():
            # Pod-to-pod traffic on the node's bridge must pass iptables (policies, services).
            bridge_nf.write_text("1")


def _in_cidr(address: str, cidr: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)


def delete(name: str) -> bool:
    """Remove namespace `name` (its veth ends go with it). True if it existed.

    The namespace itself ends when its last process and its last mount are gone; `down`
    stops the processes first."""
    where = path(name)
    if not where.exists():
        return False
    ip("netns", "delete", name, check=False)
    if where.exists():  # `ip` failed (e.g. half-removed earlier): detach and unlink ourselves
        ctypes.CDLL(None, use_errno=True).umount2(str(where).encode(), 2)  # MNT_DETACH
        with contextlib.suppress(FileNotFoundError):
            where.unlink()
    if where.exists():
        raise NetnsError(f"network namespace {name} could not be removed ({where})")
    return True
