"""`corral crd`: print or write the AgentSession CustomResourceDefinition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corral.api.crd import crd_yaml, guardrail_crd_yaml


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crd",
        help="print the AgentSession CRD generated from the API models",
        description="Generate the AgentSession CustomResourceDefinition (YAML).",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write to FILE instead of stdout (default: stdout)",
    )
    parser.add_argument(
        "--guardrails",
        action="store_true",
        help="the SessionGuardrail CRD (the admin guardrails' parameters) instead",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify, do not write: exit 1 if FILE (--output) differs from the generated CRD",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    text = guardrail_crd_yaml() if args.guardrails else crd_yaml()
    output: Path | None = args.output
    if args.check:
        if output is None:
            print("corral crd: --check needs --output FILE", file=sys.stderr)
            return 2
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is out of date: run `corral crd -o {output}`", file=sys.stderr)
            return 1
        return 0
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    return 0
