"""`corral cluster ...`: build, start, inspect and stop the local control plane."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cluster",
        help="only the local Kubernetes control plane (real upstream binaries + KWOK nodes)",
        description="The local Kubernetes control plane: etcd, kube-apiserver, "
        "controller-manager, scheduler and KWOK nodes, built from the upstream Go modules "
        "into the cache (~/.cache/corral/bin, or $CORRAL_CACHE_DIR). `corral up` starts it "
        "together with the operator and the example sessions.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the cluster binaries into the cache")
    build.add_argument(
        "--real-node",
        action="store_true",
        help="also build the real node's binaries and images (CoreDNS, kube-router, "
        "runner image...)",
    )
    build.set_defaults(handler=_build)
    up = actions.add_parser("up", help="start the cluster only (builds binaries first if needed)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="add a real node (containerd, kubelet, CNI, DNS, NetworkPolicy, volumes) beside "
        "the KWOK ones; needs root and `bash hack/node-deps.sh`",
    )
    up.set_defaults(handler=_up)
    node = actions.add_parser(
        "node",
        help="the real node alone (started by `up --real-node`): down, exec",
        description="Act on the real node only; `corral cluster status` shows it too.",
    )
    node_actions = node.add_subparsers(dest="node_action", required=True)
    node_down = node_actions.add_parser("down", help="stop the real node, keep the control plane")
    node_down.set_defaults(handler=_node_down)
    node_exec = node_actions.add_parser(
        "exec", help="run a command in the node's (or, with --outside, the test hosts') netns"
    )
    node_exec.add_argument(
        "--outside",
        action="store_true",
        help="enter the test hosts' network namespace instead of the node's",
    )
    node_exec.add_argument(
        "command", nargs=argparse.REMAINDER, help="the command and its arguments (default: bash)"
    )
    node_exec.set_defaults(handler=_node_exec)
    down = actions.add_parser("down", help="stop what `up` started and remove its state")
    down.set_defaults(handler=_down)
    status = actions.add_parser("status", help="show each component: pid, port, memory, log tail")
    status.set_defaults(handler=_status)
    kubeconfig = actions.add_parser("kubeconfig", help="print the admin kubeconfig path")
    kubeconfig.set_defaults(handler=_kubeconfig)


def _build(args: argparse.Namespace) -> int:
    from corral.cluster.build import BuildError, ensure_built

    try:
        ensure_built()
        if args.real_node:
            from corral.cluster import node

            node.preflight()
            node.build()
    except BuildError as error:
        print(f"error: {error}")
        return 1
    except RuntimeError as error:  # NodeError, ImageError
        print(f"error: {error}")
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import ClusterError, up

    try:
        up(timeout=args.timeout, real_node=args.real_node)
    except ClusterError as error:
        print(f"error: {error}")
        return 1
    return 0


def _node_down(args: argparse.Namespace) -> int:
    from corral.cluster import node
    from corral.cluster.control_plane import current_layout

    layout = current_layout()
    if layout is None or not layout.real_node:
        print("no real node in this cluster")
        return 1
    left = node.down(layout)
    if left:
        print("left behind by `node down`:\n  " + "\n  ".join(left))
        return 1
    return 0


def _node_exec(args: argparse.Namespace) -> int:
    import os

    from corral.cluster import node
    from corral.cluster.control_plane import current_layout

    layout = current_layout()
    if layout is None or not layout.real_node:
        print("no real node in this cluster")
        return 1
    where = node.NodeLayout(layout)
    target = where.outside_netns if args.outside else where.node_netns
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = ["nsenter", f"--net={target}", *(command or ["bash"])]
    os.execvp(argv[0], argv)


def _down(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import down

    return 1 if down() else 0


def _status(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import status

    return status()


def _kubeconfig(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import admin_kubeconfig

    path = admin_kubeconfig()
    if not path.exists():
        print(f"error: no cluster is up (no {path}); run `corral cluster up`")
        return 1
    print(path)
    return 0
