"""`up`, `down` and `status` of the local control plane.

Components start in dependency order, each waited for before the next; a component that
dies while starting is reported with the tail of its log. `up` on a running cluster only
starts what is missing, so it is safe to run twice. A component whose port was taken
between choosing and binding it (a neighbour cluster starting at the same moment) gets
another port and starts again (see ports.py).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.cluster import cleanup, pki, ports, process
from corral.cluster.build import binary_path, ensure_built
from corral.cluster.layout import (
    KWOK_NODE_ANNOTATION,
    REAL_NODE_IP,
    Layout,
    apiserver_argv,
    controller_manager_argv,
    etcd_argv,
    kwok_argv,
    scheduler_argv,
)
from corral.cluster.paths import state_dir

FAKE_NODES = ("kwok-node-0", "kwok-node-1")
# Realistic capacity for a mid-size cloud VM, so scheduling decisions look like production.
FAKE_NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "500Gi"}
NEEDED_COMPONENTS = ("etcd", "kubernetes", "kwok")


class ClusterError(RuntimeError):
    """The cluster could not be brought up; the message names the component and why."""


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    binary: str
    argv: Callable[[Layout], list[str]]
    port_key: str
    health_path: str | None  # HTTPS path probed for readiness; None: TCP port only
    # Every port the component binds (port_key first); a bind failure moves all of them.
    more_port_keys: tuple[str, ...] = ()

    @property
    def port_keys(self) -> tuple[str, ...]:
        return (self.port_key, *self.more_port_keys)


# How often a component may lose its port to a neighbour before `up` gives up.
PORT_ATTEMPTS = 5

COMPONENTS = (
    ComponentSpec("etcd", "etcd", etcd_argv, "etcd-client", None, ("etcd-peer",)),
    ComponentSpec("kube-apiserver", "kube-apiserver", apiserver_argv, "apiserver", "/readyz"),
    ComponentSpec(
        "kube-controller-manager",
        "kube-controller-manager",
        controller_manager_argv,
        "controller-manager",
        "/healthz",
    ),
    ComponentSpec("kube-scheduler", "kube-scheduler", scheduler_argv, "scheduler", "/healthz"),
    ComponentSpec("kwok", "kwok", kwok_argv, "kwok", None),
)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def admin_kubeconfig() -> Path:
    return Layout(root=state_dir()).kubeconfig(pki.ADMIN)


def current_layout(root: Path | None = None) -> Layout | None:
    """The cluster in `root` (default: `state_dir()`), if one was ever started there."""
    return Layout.load(root or state_dir())


def _pid(layout: Layout, spec: ComponentSpec) -> int | None:
    return process.running_pid(layout.pid_file(spec.name), str(binary_path(spec.binary)))


def _https_ok(layout: Layout, port: int, path: str) -> bool:
    certs = layout.certs
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.cert("admin")), str(certs.key("admin")))
    if path != "/readyz":
        # The controller-manager and scheduler serve self-signed certs of their own.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}{path}", context=context, timeout=2
        ) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tcp_ok(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _healthy(layout: Layout, spec: ComponentSpec, pid: int | None = None) -> bool:
    """Healthy, and (given its pid) the one answering: a neighbour's process on the same
    port must not pass for ours."""
    port = layout.ports[spec.port_key]
    if pid is not None and not all(ports.listens(pid, layout.ports[k]) for k in spec.port_keys):
        return False
    if spec.health_path:
        return _https_ok(layout, port, spec.health_path)
    return _tcp_ok(port)


class _PortTaken(Exception):
    """The component's bind failed: a neighbour took the port after it was chosen."""


def _log_since(log_file: Path, offset: int) -> str:
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _wait_healthy(layout: Layout, spec: ComponentSpec, deadline: float, offset: int = 0) -> None:
    log = layout.log_file(spec.name)
    while time.monotonic() < deadline:
        pid = _pid(layout, spec)
        if ports.bind_failed(_log_since(log, offset)):
            raise _PortTaken(spec.name)
        if pid is None:
            raise ClusterError(
                f"{spec.name} exited while starting. Last lines of {log}:\n" + process.log_tail(log)
            )
        if _healthy(layout, spec, pid):
            return
        time.sleep(0.2)
    raise ClusterError(
        f"{spec.name} did not become healthy in time (port {layout.ports[spec.port_key]}). "
        f"Last lines of {log}:\n" + process.log_tail(log)
    )


def _move_ports(layout: Layout, keys: tuple[str, ...]) -> None:
    layout.ports = ports.move(layout.ports, keys)
    layout.save()
    if "apiserver" in keys:
        for identity in pki.CLIENTS:
            layout.write_kubeconfig(identity)


def _start(layout: Layout, spec: ComponentSpec, deadline: float) -> bool:
    """Start `spec` and wait until it is healthy; True if its ports had to move."""
    moved = False
    for _ in range(PORT_ATTEMPTS):
        taken = tuple(k for k in spec.port_keys if not ports.port_free(layout.ports[k]))
        if taken:
            _move_ports(layout, taken)
            moved = True
        log = layout.log_file(spec.name)
        offset = _log_size(log)
        process.start(spec.argv(layout), layout.pid_file(spec.name), log)
        try:
            _wait_healthy(layout, spec, deadline, offset)
            return moved
        except _PortTaken:
            process.stop(layout.pid_file(spec.name), str(binary_path(spec.binary)))
            _say(f"{spec.name}: a port was taken while starting; choosing another")
            _move_ports(layout, spec.port_keys)
            moved = True
    raise ClusterError(
        f"{spec.name} lost its port to another process {PORT_ATTEMPTS} times in a row; "
        f"see {layout.log_file(spec.name)}"
    )


def _prepare_layout(root: Path, real_node: bool = False) -> Layout:
    layout = Layout.load(root)
    if layout is None:
        layout = Layout(root=root, ports=ports.choose_ports(), real_node=real_node)
        layout.save()
    elif real_node and not layout.real_node:
        if any(_pid(layout, spec) is not None for spec in COMPONENTS):
            raise ClusterError(
                f"the cluster in {root} runs without --real-node: its API server cannot reach "
                "a real node. Use another state directory (CORRAL_STATE_DIR=...) for a cluster "
                "with a real node, or `corral cluster down` this one first."
            )
        layout.real_node = True
        layout.save()
    if layout.real_node:
        layout.write_egress_selector_config()
        layout.write_audit_policy()
    layout.certs.ensure(apiserver_ips=("127.0.0.1", "10.96.0.1", REAL_NODE_IP))
    for identity in pki.CLIENTS:
        layout.write_kubeconfig(identity)
    return layout


def kubectl(layout: Layout, *args: str, stdin: str | None = None) -> str:
    argv = [str(binary_path("kubectl")), f"--kubeconfig={layout.kubeconfig(pki.ADMIN)}", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def fake_nodes_manifest(names: tuple[str, ...] = FAKE_NODES) -> str:
    """Node objects KWOK manages (more can be added, e.g. by the benchmarks)."""
    docs = []
    capacity = "".join(f'      {k}: "{v}"\n' for k, v in FAKE_NODE_CAPACITY.items())
    for index, name in enumerate(names):
        docs.append(
            f"""apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    {KWOK_NODE_ANNOTATION}: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/zone: zone-{index % 3}
spec:
  taints:
  - key: {KWOK_NODE_ANNOTATION}
    value: fake
    effect: NoSchedule
status:
  allocatable:
{capacity}  capacity:
{capacity}"""
        )
    return "---\n".join(docs)


def _bootstrap(layout: Layout, deadline: float) -> None:
    kubectl(layout, "apply", "-f", "-", stdin=fake_nodes_manifest())
    while time.monotonic() < deadline:
        # Only the nodes `up` owns: others (e.g. the benchmarks' extra KWOK nodes) may come
        # and go without making `up` wait for them.
        out = kubectl(
            layout,
            "get",
            "nodes",
            *FAKE_NODES,
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{' '}{end}",
        )
        if out.split().count("True") == len(FAKE_NODES):
            return
        time.sleep(0.3)
    raise ClusterError("the KWOK nodes did not become Ready in time; see `corral cluster status`")


def up(
    timeout: float = 120.0,
    real_node: bool = False,
    node_timeout: float = 900.0,
    root: Path | None = None,
    node_with_runner: bool = True,
) -> Layout:
    """Start what is not running, in `root` (default: `state_dir()`).

    With `real_node` (or in a cluster first made with it) the real node comes up too (see
    node.py); its first start builds images, which takes minutes."""
    started = time.monotonic()
    ensure_built(NEEDED_COMPONENTS)
    layout = _prepare_layout(root or state_dir(), real_node)
    deadline = time.monotonic() + timeout
    moved = False
    for spec in COMPONENTS:
        if _pid(layout, spec) is not None:
            if not moved:
                continue
            # An earlier component moved to a new port this component was started with.
            process.stop(layout.pid_file(spec.name), str(binary_path(spec.binary)))
        moved = _start(layout, spec, deadline) or moved
    _bootstrap(layout, deadline)
    if layout.real_node:
        from corral.cluster import images, netns, node

        try:
            node.up(layout, timeout=node_timeout, with_runner=node_with_runner)
        except (node.NodeError, images.ImageError, netns.NetnsError) as error:
            raise ClusterError(f"the real node did not come up: {error}") from error
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    _say(f"corral cluster is up in {time.monotonic() - started:.1f}s: {layout.apiserver_url}")
    _say(f"  export KUBECONFIG={kubeconfig}")
    _say(f"  {binary_path('kubectl')} get nodes")
    return layout


CONTROL_PLANE_PROGRAMS = frozenset(spec.binary for spec in COMPONENTS)


def _control_plane_pids(root: Path) -> set[int]:
    """Control-plane processes of the cluster in `root`, found by program name and a command
    line naming `root`: also the ones whose pid file is gone or names another process."""
    found = set()
    for pid in cleanup.all_pids():
        argv = cleanup.cmdline(pid)
        if argv and Path(argv[0]).name in CONTROL_PLANE_PROGRAMS and cleanup.mentions(argv, root):
            found.add(pid)
    return found


def _processes_naming(root: Path) -> set[int]:
    """Any process, ours or not, whose command line names a path in `root`."""
    protected = cleanup.protected_pids()
    return {
        pid
        for pid in cleanup.all_pids()
        if pid not in protected and cleanup.mentions(cleanup.cmdline(pid), root)
    }


STATE_ENTRIES = ("pids", "pki", "etcd", "logs", "node")


def _half_removed(root: Path) -> bool:
    """A state directory without cluster.json that a cluster left (an interrupted `down`),
    never a folder that holds other clusters' state directories."""
    try:
        entries = {entry.name for entry in root.iterdir()}
    except OSError:
        return False
    nested = any((root / name / "cluster.json").exists() for name in entries)
    return bool(entries & set(STATE_ENTRIES)) and not nested


def down(root: Path | None = None) -> list[str]:
    """Stop everything `up` started in `root` and remove the directory. Idempotent, and it
    finishes whatever vanishes or fails on the way; returns what is left (normally
    nothing), each a line for the user."""
    root = root or state_dir()
    layout = current_layout(root)
    if layout is None:
        if not _half_removed(root):
            _say("no local cluster state; nothing to stop")
            return []
        layout = Layout(root=root)  # cluster.json went first: still sweep the rest
    left: list[str] = []
    if layout.real_node or (root / "node").exists():
        from corral.cluster import node

        left += node.down(layout, delete_node=False)
    for spec in reversed(COMPONENTS):
        if process.stop(layout.pid_file(spec.name), str(binary_path(spec.binary))):
            _say(f"stopped {spec.name}")
    cleanup.kill_until_gone(lambda: _control_plane_pids(root))
    left += [f"mount {point}" for point in cleanup.unmount_under(root)]
    left += cleanup.remove_tree(root)
    left += [
        f"process {pid}: {' '.join(cleanup.cmdline(pid))[:120]}"
        for pid in sorted(_processes_naming(root))
    ]
    if left:
        _say(f"left in {root}:\n  " + "\n  ".join(left))
    else:
        _say(f"removed {root}")
    return left


def is_up(root: Path | None = None) -> bool:
    layout = current_layout(root)
    if not (
        layout is not None
        and all(_pid(layout, s) is not None for s in COMPONENTS)
        and _healthy(layout, COMPONENTS[1], _pid(layout, COMPONENTS[1]))
    ):
        return False
    if layout.real_node:
        from corral.cluster import node

        return node.is_up(layout)
    return True


@contextlib.contextmanager
def running(root: Path | None = None) -> Iterator[Layout]:
    """The cluster in `root` for a `with` block: started if it is not up, and stopped when
    the block ends only if the block started it (and CORRAL_KEEP_CLUSTER is unset). A test
    run or a benchmark leaves the machine as it found it, and never stops a cluster someone
    else brought up (a developer's `corral up`)."""
    started_here = not is_up(root)
    layout = up(root=root)
    try:
        yield layout
    finally:
        if started_here and not os.environ.get("CORRAL_KEEP_CLUSTER"):
            down(root)


def status() -> int:
    layout = current_layout()
    if layout is None:
        print("no local cluster (run `corral cluster up`)")
        return 1
    healthy = True
    print(f"{'COMPONENT':<26}{'PID':>8}{'PORT':>7}  {'STATE':<9}{'RSS':>9}")
    for spec in COMPONENTS:
        pid = _pid(layout, spec)
        port = layout.ports[spec.port_key]
        if pid is None:
            state, rss = "stopped", "-"
        else:
            state = "healthy" if _healthy(layout, spec, pid) else "unhealthy"
            rss = f"{process.rss_bytes(pid) // 2**20}Mi"
        healthy = healthy and state == "healthy"
        print(f"{spec.name:<26}{pid or '-':>8}{port:>7}  {state:<9}{rss:>9}")
        if state != "healthy":
            print(
                "  last log lines:\n    "
                + process.log_tail(layout.log_file(spec.name), 10).replace("\n", "\n    ")
            )
    if layout.real_node:
        from corral.cluster import node

        for name, pid, state in node.status_lines(layout):
            rss = f"{process.rss_bytes(pid) // 2**20}Mi" if pid else "-"
            healthy = healthy and state == "healthy"
            print(f"{name:<26}{pid or '-':>8}{'-':>7}  {state:<9}{rss:>9}")
            if state != "healthy":
                print(
                    "  last log lines:\n    "
                    + process.log_tail(layout.log_file(name), 10).replace("\n", "\n    ")
                )
    print(f"kubeconfig: {layout.kubeconfig(pki.ADMIN)}")
    return 0 if healthy else 1
