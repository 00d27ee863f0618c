"""`up`, `down` and `status` of the local control plane.

Components start in dependency order, each waited for before the next; a component that
dies while starting is reported with the tail of its log. `up` on a running cluster only
starts what is missing, so it is safe to run twice.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.cluster import pki, process
from corral.cluster.build import binary_path, ensure_built
from corral.cluster.layout import (
    KWOK_NODE_ANNOTATION,
    REAL_NODE_IP,
    Layout,
    apiserver_argv,
    choose_ports,
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


COMPONENTS = (
    ComponentSpec("etcd", "etcd", etcd_argv, "etcd-client", None),
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


def _healthy(layout: Layout, spec: ComponentSpec) -> bool:
    port = layout.ports[spec.port_key]
    if spec.health_path:
        return _https_ok(layout, port, spec.health_path)
    return _tcp_ok(port)


def _wait_healthy(layout: Layout, spec: ComponentSpec, deadline: float) -> None:
    while time.monotonic() < deadline:
        if _pid(layout, spec) is None:
            raise ClusterError(
                f"{spec.name} exited while starting. Last lines of {layout.log_file(spec.name)}:\n"
                + process.log_tail(layout.log_file(spec.name))
            )
        if _healthy(layout, spec):
            return
        time.sleep(0.2)
    raise ClusterError(
        f"{spec.name} did not become healthy in time (port {layout.ports[spec.port_key]}). "
        f"Last lines of {layout.log_file(spec.name)}:\n"
        + process.log_tail(layout.log_file(spec.name))
    )


def _prepare_layout(root: Path, real_node: bool = False) -> Layout:
    layout = Layout.load(root)
    if layout is None:
        layout = Layout(root=root, ports=choose_ports(), real_node=real_node)
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


def _ensure_port_usable(layout: Layout, spec: ComponentSpec) -> None:
    if _tcp_ok(layout.ports[spec.port_key]):
        raise ClusterError(
            f"port {layout.ports[spec.port_key]} ({spec.port_key}) is taken by another process, "
            f"so {spec.name} cannot start. Stop that process, or run `corral cluster down` "
            "and `corral cluster up` to choose new ports."
        )


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
) -> Layout:
    """Start what is not running, in `root` (default: `state_dir()`).

    With `real_node` (or in a cluster first made with it) the real node comes up too (see
    node.py); its first start builds images, which takes minutes."""
    started = time.monotonic()
    ensure_built(NEEDED_COMPONENTS)
    layout = _prepare_layout(root or state_dir(), real_node)
    deadline = time.monotonic() + timeout
    for spec in COMPONENTS:
        if _pid(layout, spec) is not None:
            continue
        _ensure_port_usable(layout, spec)
        process.start(spec.argv(layout), layout.pid_file(spec.name), layout.log_file(spec.name))
        _wait_healthy(layout, spec, deadline)
    _bootstrap(layout, deadline)
    if layout.real_node:
        from corral.cluster import images, netns, node

        try:
            node.up(layout, timeout=node_timeout)
        except (node.NodeError, images.ImageError, netns.NetnsError) as error:
            raise ClusterError(f"the real node did not come up: {error}") from error
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    _say(f"corral cluster is up in {time.monotonic() - started:.1f}s: {layout.apiserver_url}")
    _say(f"  export KUBECONFIG={kubeconfig}")
    _say(f"  {binary_path('kubectl')} get nodes")
    return layout


def down(root: Path | None = None) -> None:
    layout = current_layout(root)
    if layout is None:
        _say("no local cluster state; nothing to stop")
        return
    if layout.real_node:
        from corral.cluster import node

        node.down(layout)
    for spec in reversed(COMPONENTS):
        if process.stop(layout.pid_file(spec.name), str(binary_path(spec.binary))):
            _say(f"stopped {spec.name}")
    shutil.rmtree(layout.root, ignore_errors=True)
    _say(f"removed {layout.root}")


def is_up(root: Path | None = None) -> bool:
    layout = current_layout(root)
    if not (
        layout is not None
        and all(_pid(layout, s) is not None for s in COMPONENTS)
        and _healthy(layout, COMPONENTS[1])
    ):
        return False
    if layout.real_node:
        from corral.cluster import node

        return node.is_up(layout)
    return True


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
            state = "healthy" if _healthy(layout, spec) else "unhealthy"
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
