"""The commands for people who use sessions: ls, chat, send, run, logs, transcript, wake,
suspend, resume. Also `kubectl corral ...` (the same entry point, as a kubectl plugin).

Nothing heavy is imported until a command runs, so `corral runner` and `corral operator`
do not pay for rich, prompt_toolkit or the kubernetes client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral.client.terminal import InterruptOnCtrlC, console, printable

if TYPE_CHECKING:
    from corral.client.aio import AsyncClient


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument(
        "--gateway-url",
        help="the gateway's URL, e.g. an Ingress (env CORRAL_GATEWAY_URL); default: through "
        "the API server's service proxy",
    )
    group.add_argument(
        "--gateway-namespace", help="namespace of the gateway Service (corral-system)"
    )
    group.add_argument("--gateway-service", help="name of the gateway Service (corral-gateway)")
    return parent


def register(subparsers: Any) -> None:
    common = _common()
    ref_help = "NAMESPACE/NAME (or NAME in the context's namespace)"

    def add(name: str, help: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        parser = subparsers.add_parser(name, help=help, description=help, parents=[common])
        parser.set_defaults(handler=handler)
        return parser

    ls = add("ls", "list sessions: name, pattern, phase, idle for, turns, cost, age", _ls)
    where = ls.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")

    chat = add("chat", "talk to a session interactively (Ctrl-C interrupts, Ctrl-D leaves)", _chat)
    chat.add_argument("session", help=ref_help)
    chat.add_argument("--agent", help="agent of a Shared session (default: the first)")

    send = add("send", "send one message, print the reply; exit 0 if it succeeded", _send)
    send.add_argument("session", help=ref_help)
    send.add_argument("text", help="the message ('-' reads it from stdin)")
    send.add_argument("--agent", help="agent of a Shared session (default: the first)")
    send.add_argument("--json", action="store_true", help="print each event as a JSON line")

    run = add("run", "create an Ephemeral session from a task file; --wait for its result", _run)
    run.add_argument("-f", "--filename", required=True, help="AgentSession manifest or bare spec")
    run.add_argument("-n", "--namespace", help="namespace (default: the file's, the context's)")
    run.add_argument("--wait", action="store_true", help="wait for the result; exit 0 on success")
    run.add_argument("--rm", action="store_true", help="delete the session after --wait")
    run.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    logs = add("logs", "print the runner's log of a session's current pod", _logs)
    logs.add_argument("session", help=ref_help)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")

    transcript = add("transcript", "print a session's conversation so far", _transcript)
    transcript.add_argument("session", help=ref_help)
    transcript.add_argument("--agent", help="agent of a Shared session")
    transcript.add_argument("--limit", type=int, default=200, help="last N entries (200)")
    transcript.add_argument("--json", action="store_true", help="print the raw JSON answer")

    wake = add("wake", "wake a sleeping Hybrid session", _wake)
    wake.add_argument("session", help=ref_help)
    wake.add_argument("--wait", action="store_true", help="wait until it is Running")
    wake.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds --wait waits at most (default: %(default)s)",
    )
    suspend = add(
        "suspend", "suspend a session (its pod goes; a Hybrid keeps its volume)", _suspend
    )
    suspend.add_argument("session", help=ref_help)
    resume = add("resume", "undo suspend", _resume)
    resume.add_argument("session", help=ref_help)


# --- plumbing ------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AsyncClient:
    from corral.client.aio import AsyncClient

    return AsyncClient(
        kubeconfig=args.kubeconfig,
        context=args.context,
        gateway_url=args.gateway_url,
        gateway_namespace=args.gateway_namespace,
        gateway_service=args.gateway_service,
    )


def _main(
    args: argparse.Namespace, body: Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]
) -> int:
    """Run one command; a CorralError becomes one line on stderr and exit code 1."""
    from corral.client.errors import CorralError

    async def run() -> int:
        client = _client(args)
        try:
            return await body(client, args)
        finally:
            await client.close()

    import aiohttp

    try:
        return asyncio.run(run())
    except CorralError as error:
        return _fail(str(error))
    except aiohttp.ClientError as error:  # anything the client did not name itself
        return _fail(f"{type(error).__name__}: {str(error)[:300]}")
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    """One line on stderr (the message is text, never rich markup); exit code 1."""
    from rich.text import Text

    console(stderr=True).print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return 1


# --- commands ------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        from corral.client.render import sessions_table

        sessions = await client.list(args.namespace, args.all_namespaces)
        if not sessions:
            where = "any namespace" if args.all_namespaces else (args.namespace or client.namespace)
            console(stderr=True).print(f"No sessions in {where}.")
            return 0
        console().print(sessions_table(sessions, args.all_namespaces))
        return 0

    return _main(args, body)


def _send(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        import json

        from corral.client.events import Reply
        from corral.client.render import EventRenderer

        text = sys.stdin.read() if args.text == "-" else args.text
        ref = client.ref(args.session)
        renderer = EventRenderer(console())
        reply = Reply()

        async def interrupt() -> None:
            await client.interrupt(ref, args.agent)

        async with InterruptOnCtrlC(interrupt, renderer.console):
            async for event in client.send(ref, text, args.agent):
                reply.add(event)
                if args.json:
                    print(json.dumps(event), flush=True)
                else:
                    renderer.render(event)
        return 0 if reply.ok else 1

    return _main(args, body)


def _chat(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        from corral.client.chat import chat

        return await chat(client, client.ref(args.session), args.agent, console())

    return _main(args, body)


def _run(args: argparse.Namespace) -> int:
    if args.rm and not args.wait:
        _fail("--rm needs --wait (the session is deleted once it has finished)")
        return 2

    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        from corral.client.task import run_task

        return await run_task(client, args.filename, args.namespace, args.wait, args.rm,
                              args.timeout, console())  # fmt: skip

    return _main(args, body)


def _logs(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        async for line in client.logs(args.session, args.follow):
            print(printable(line), flush=True)  # a log line can be anything the agent printed
        return 0

    return _main(args, body)


def _transcript(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        import json

        from corral.client.render import render_transcript

        answer = await client.transcript(args.session, args.agent, args.limit)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            render_transcript(console(), answer)
        return 0

    return _main(args, body)


# Phases a wake ends in: Running, or one it cannot leave (finished, suspended).
WAKE_ENDS = frozenset({"Running", "Failed", "Succeeded", "Suspended"})


def _wake(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        session = await client.wake(args.session)
        out = console()
        out.print(f"{session.ref}: wake requested (phase {session.phase})")
        if session.suspend:
            _fail(f"{session.ref} is suspended: a wake does not start it; `corral resume` does")
            return 1
        if args.wait:
            with out.status(f"waiting for {session.ref} to be Running…"):
                session = await client.wait(
                    session.ref, lambda s: s.phase in WAKE_ENDS or s.suspend, args.timeout
                )
            out.print(f"{session.ref}: {session.phase}")
            return 0 if session.phase == "Running" else 1
        return 0

    return _main(args, body)


def _suspend(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        session = await client.suspend(args.session)
        console().print(f"{session.ref}: suspended")
        return 0

    return _main(args, body)


def _resume(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient, args: argparse.Namespace) -> int:
        session = await client.resume(args.session)
        console().print(f"{session.ref}: resumed")
        return 0

    return _main(args, body)
