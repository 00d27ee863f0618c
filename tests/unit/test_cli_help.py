"""`corral --help` explains itself: a user-facing description, --version, help with its
default on every option of every subcommand, and test tools kept out of the command list."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Iterator

import pytest

from corral import cli

HIDDEN = {"fake-anthropic", "model-relay", "probe"}


def _parsers(
    parser: argparse.ArgumentParser, path: str = "corral"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
        and not action.help
    ]
    assert missing == []


def test_every_option_with_a_default_says_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapped inside a default
    unsaid = []
    for path, parser in _parsers(cli.build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if (
                not action.option_strings
                or action.help == argparse.SUPPRESS
                or default is None
                or default is False
                or default == argparse.SUPPRESS
            ):
                continue
            if "default" not in (action.help or "") and f"(default: {default})" not in text:
                unsaid.append(f"{path} {action.option_strings[0]}")
    assert unsaid == []


def test_every_subcommand_has_a_help_line() -> None:
    parser = cli.build_parser()
    for path, sub in _parsers(parser):
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions}
                hidden = HIDDEN if path == "corral" else set()
                assert listed == set(action.choices) - hidden, path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"corral {importlib.metadata.version('corral')}"


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "--version" in text
    assert "Kubernetes" in text and "AgentSession" in text
    # Not the module docstring written for developers.
    assert "register(subparsers)" not in text and "imports stay lazy" not in text


def test_test_tools_are_not_in_the_command_list(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    usage, _, rest = text.partition("\n\n")
    commands = text[text.index("commands:") : text.index("start here")]
    for name in HIDDEN:
        assert name not in usage and name not in commands
        # ...but named apart, and still runnable.
        assert f"corral {name}" in rest
        assert "usage: corral " + name in _help(capsys, name)


def test_runner_test_flags_are_grouped_apart(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "runner")
    options = text[text.index("options:") : text.index("test tools:")]
    tools = text[text.index("test tools:") :]
    assert "--fake-anthropic" in tools and "--fake-anthropic" not in options


def test_cluster_node_lists_only_commands_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser(["cluster"])
    node = dict(_parsers(parser))["corral cluster node"]
    (actions,) = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
    text = _help(capsys, "cluster")
    line = next(row for row in text.splitlines() if row.strip().startswith("node "))
    named = {w.strip(",.") for w in line.split(":", 1)[1].split()} if ":" in line else set()
    assert named <= set(actions.choices), line


def test_up_flag_names_do_not_reuse_check() -> None:
    """`--check` means "verify, do not write" (crd); `up` waits with --exit-when-ready and
    still accepts its old name."""
    parser = cli.build_parser(["up"])
    assert parser.parse_args(["up", "--exit-when-ready"]).check is True
    assert parser.parse_args(["up", "--check"]).check is True
    up = dict(_parsers(parser))["corral up"]
    assert "--check" not in up.format_help()
