"""The session-user commands are registered with `corral` and stay out of other commands'
imports (the runner's start-up time matters)."""

from __future__ import annotations

import subprocess
import sys

from corral.cli import build_parser


def test_every_command_parses_with_its_flags() -> None:
    parser = build_parser()  # every subsystem: one module registering several commands
    args = parser.parse_args(["ls", "-A", "--gateway-url", "http://gw:8080"])
    assert args.all_namespaces and args.gateway_url == "http://gw:8080"
    args = parser.parse_args(["chat", "demo/chat", "--agent", "reviewer", "--context", "c"])
    assert (args.session, args.agent, args.context) == ("demo/chat", "reviewer", "c")
    args = parser.parse_args(["run", "-f", "task.yaml", "--wait", "--rm"])
    assert args.filename == "task.yaml" and args.wait and args.rm
    for command in ("send x hi", "logs x -f", "transcript x", "wake x", "suspend x", "resume x"):
        assert callable(parser.parse_args(command.split()).handler)


def test_run_rm_without_wait_is_refused() -> None:
    args = build_parser(["run"]).parse_args(["run", "-f", "t.yaml", "--rm"])
    assert args.handler(args) == 2


def _imported(command: str) -> set[str]:
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "corral.cli", command, "--help"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    return {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if "|" in line}


def _client_side(modules: set[str]) -> set[str]:
    roots = ("rich", "prompt_toolkit", "corral.client")
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}


def test_runner_and_operator_do_not_import_the_terminal_libraries() -> None:
    assert _client_side(_imported("ls"))  # the check sees them where they are imported
    for command in ("runner", "operator"):
        assert not _client_side(_imported(command)), command


async def test_leaving_right_after_ctrl_c_still_delivers_the_interrupt() -> None:
    """Leaving (the turn's stream ended, or a second Ctrl-C) must not cancel the interrupt
    on its way: the turn would run on, spending, and the next message find it busy."""
    import asyncio

    from corral.client.terminal import InterruptOnCtrlC, console

    delivered: list[bool] = []

    async def slow_interrupt() -> None:
        await asyncio.sleep(0.3)  # through the API server's proxy, on a new connection
        delivered.append(True)

    async with InterruptOnCtrlC(slow_interrupt, console()) as ctrl_c:
        ctrl_c._pressed()
    assert delivered == [True]
