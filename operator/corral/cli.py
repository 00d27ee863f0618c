"""The `corral` console script: one entry point, one subcommand per subsystem.

Each subsystem owns a `register(subparsers)` function; imports stay lazy so that
`corral cluster status` does not pay for importing the SDK or kopf. A subsystem that
registers its parser without `help=` (a test tool) still runs but is left out of the
command list of `corral --help` (the epilog names it apart).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> module that defines `register(subparsers)`
SUBSYSTEMS: dict[str, str] = {
    "cluster": "corral.cluster.cli",
    "crd": "corral.api.cli",
    "operator": "corral.controller.cli",
    "gateway": "corral.gateway.cli",
    "runner": "corral.runner.cli",
    "fake-anthropic": "corral.testing.cli",
    "up": "corral.dev",
    "down": "corral.dev",
    "model-relay": "corral.devenv.relay",
    "probe": "corral.probe",
    # for people who use sessions (corral.client); also `kubectl corral ...`
    **dict.fromkeys(
        ("ls", "chat", "send", "run", "logs", "transcript", "wake", "suspend", "resume"),
        "corral.client.cli",
    ),
}

DESCRIPTION = """\
Corral runs Claude Agent SDK sessions on Kubernetes: you describe a session as an
AgentSession resource and the operator gives it a hardened pod, a Service, a
NetworkPolicy and, for Hybrid sessions, a volume that outlives idle periods.

The commands below use sessions with your kubeconfig (docs/client.md),
run Corral's parts (the operator, the session gateway, the in-pod runner), print the
CRD, or start a local Kubernetes to try it all on.
Run `corral COMMAND --help` for a command's options and their defaults."""

EPILOG = """\
start here: `corral up` (a local cluster, Corral and one example session
per pattern). Docs: README.md and docs/ in the repository.

developer tools, not for production: `corral fake-anthropic` (a scripted fake of
the Anthropic API, for tests), `corral model-relay` (how `corral up` reaches the real
API from the local real node). Run by the kubelet: `corral probe` (the startup probe of
Corral's pods)."""


def version() -> str:
    import importlib.metadata  # only for --version: reading package metadata takes a while

    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Says each option's default, unless its help already does or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or default == []
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands (at every depth) share the HelpFormatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (every command would pay for it else)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"corral {version()}")
        parser.exit()


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog="corral", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action=VersionAction)
    subparsers = parser.add_subparsers(dest="command", required=True, title="commands")
    # One module may register several subcommands: register each module once.
    for module_name in dict.fromkeys(SUBSYSTEMS[name] for name in names or SUBSYSTEMS):
        importlib.import_module(module_name).register(subparsers)
    # Only parsers registered with a help line are listed (argparse 3.11 would print
    # "==SUPPRESS==" for a help of argparse.SUPPRESS).
    shown = [a.dest for a in subparsers._choices_actions]
    subparsers.metavar = "{" + ",".join(shown) + "}"
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
