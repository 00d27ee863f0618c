"""`corral cluster ...`: build, start, inspect and stop the local control plane."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cluster", help="the local Kubernetes control plane (real upstream binaries + KWOK)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the cluster binaries into the cache")
    build.set_defaults(handler=_build)
    up = actions.add_parser("up", help="start the cluster (builds binaries first if needed)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", help="stop what `up` started and remove its state")
    down.set_defaults(handler=_down)
    status = actions.add_parser("status", help="show each component")
    status.set_defaults(handler=_status)
    kubeconfig = actions.add_parser("kubeconfig", help="print the admin kubeconfig path")
    kubeconfig.set_defaults(handler=_kubeconfig)


def _build(args: argparse.Namespace) -> int:
    from corral.cluster.build import BuildError, ensure_built

    try:
        ensure_built()
    except BuildError as error:
        print(f"error: {error}")
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import ClusterError, up

    try:
        up(timeout=args.timeout)
    except ClusterError as error:
        print(f"error: {error}")
        return 1
    return 0


def _down(args: argparse.Namespace) -> int:
    from corral.cluster.control_plane import down

    down()
    return 0


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
