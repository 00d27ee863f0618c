"""The `corral` console script: one entry point, one subcommand per subsystem.

Each subsystem owns a `register(subparsers)` function; imports stay lazy so that
`corral cluster status` does not pay for importing the SDK or kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module that defines `register(subparsers)`
SUBSYSTEMS: dict[str, str] = {
    "cluster": "corral.cluster.cli",
    "crd": "corral.api.cli",
    "operator": "corral.controller.cli",
    "gateway": "corral.gateway.cli",
    "runner": "corral.runner.cli",
    "fake-anthropic": "corral.testing.cli",
    "up": "corral.dev",
    # for people who use sessions (corral.client); also `kubectl corral ...`
    **dict.fromkeys(
        ("ls", "chat", "send", "run", "logs", "transcript", "wake", "suspend", "resume"),
        "corral.client.cli",
    ),
}


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    # One module may register several subcommands: register each module once.
    for module_name in dict.fromkeys(SUBSYSTEMS[name] for name in names or SUBSYSTEMS):
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the subsystem that is asked for; fall back to all for --help.
    first = args_list[0] if args_list else ""
    names = [first] if first in SUBSYSTEMS else None
    parser = build_parser(names)
    args = parser.parse_args(args_list)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
