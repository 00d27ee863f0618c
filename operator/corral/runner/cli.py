"""`corral runner`: the process inside a session pod that drives claude-agent-sdk."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
from pathlib import Path
from typing import Any, NoReturn

from corral.api import runtime


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "runner",
        help="run an AgentSession inside its pod (the operator starts it)",
        description=__doc__,
    )
    parser.add_argument(
        "--session",
        type=Path,
        default=Path(runtime.SPEC_FILE),
        help="AgentSession manifest or bare spec, YAML or JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(runtime.WORKSPACE_DIR),
        help="the agent's working directory (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(runtime.STATE_DIR),
        help="CLI config and runner state live here (default: %(default)s)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on")
    parser.add_argument("--port", type=int, default=runtime.RUNNER_PORT, help="HTTP port")
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(runtime.TERMINATION_LOG),
        help="where an Ephemeral run writes its outcome (default: %(default)s)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        help="on SIGTERM, wait this long for a running message to finish "
        "before interrupting it (default: 20; keep below the pod's grace period)",
    )
    testing = parser.add_argument_group(
        "test tools", "not for production: an in-process fake of the Anthropic API"
    )
    testing.add_argument(
        "--fake-anthropic",
        action="store_true",
        help="serve a fake Anthropic API in-process when no API key is set "
        "(also: CORRAL_FAKE_ANTHROPIC=1)",
    )
    testing.add_argument(
        "--fake-anthropic-port",
        type=int,
        default=0,
        help="port of the in-process fake; 0 picks a free one (see the log)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        help="largest request body or WebSocket message accepted (default: 256 KiB)",
    )
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    # Start-up's imports (asyncio, pydantic and the API models, the SDK) make tens of
    # thousands of lasting objects and next to no garbage, yet every 700 allocations the
    # collector walked the young ones (about a hundred times, and ten times the middle
    # generation too): about 0.02 of the runner's 0.25 CPU-seconds to start. Off until
    # the runner is set up (below).
    gc.disable()
    # Listen first, before the imports below take most of a start-up (see listener).
    from corral.runner import listener

    try:
        sock = listener.bind(args.host, args.port)
    except OSError as exc:
        return _config_error(f"cannot listen on {args.host}:{args.port}: {exc}")
    # Before anything is started: the agent's processes must not inherit or read them.
    from corral.runner import own_credentials

    credentials = own_credentials.take()
    process_hidden = own_credentials.hide_process()
    # From now on the runner tries whether the pod's egress is filtered yet: no CLI
    # starts before it is (see egress_gate).
    from corral.runner import egress_gate

    try:
        gate = egress_gate.EgressGate(egress_gate.Canary.from_env()).start()
    except ValueError as exc:
        return _config_error(str(exc))
    # Before the runner writes anything there: on a pod's first start nothing is left
    # behind for a CLI to run, so its CLIs may boot while the gate is still shut.
    # (Without HOME the CLI's home is not known: not taken for empty.)
    home = os.environ.get("HOME")
    nothing_left = home is not None and egress_gate.nothing_left_behind(
        (args.workspace, args.state_dir, Path(home))
    )
    # Each recorded CLI starts as soon as the gate opens and boots while the runner
    # imports and validates.
    from corral.runner import early_cli

    early = early_cli.launch_recorded(args.state_dir.resolve(), args.session, gate)
    # Imported here so `corral --help` does not load the SDK.
    from corral.runner import jsonlog
    from corral.runner.app import RunnerSettings, run
    from corral.runner.session_file import SessionFileError, load_session

    try:
        session = load_session(args.session)
    except SessionFileError as exc:
        early.discard()
        return _config_error(str(exc))
    jsonlog.configure(session.name, session.namespace)
    # Flags left out keep RunnerSettings' defaults (defined once, there).
    optional = {
        "drain_seconds": args.drain_seconds,
        "max_request_bytes": args.max_request_bytes,
    }
    settings = RunnerSettings(
        **{key: value for key, value in optional.items() if value is not None},
        spec=session.spec,
        # Absolute, but symlinks kept: in the pod the file is a symlink through `..data`,
        # which the kubelet re-points at a new directory (removing the old) on each update.
        spec_file=Path(os.path.abspath(args.session)),
        # Resume needs the same absolute cwd in every pod: never a relative path.
        workspace=args.workspace.resolve(),
        state_dir=args.state_dir.resolve(),
        host=args.host,
        port=args.port,
        termination_log=args.termination_log,
        fake_anthropic=args.fake_anthropic,
        fake_anthropic_port=args.fake_anthropic_port,
        session_name=session.name,
        session_namespace=session.namespace,
        startup_probe_wait_seconds=_startup_probe_wait(),
        listener=sock,
        early_clis=early,
        egress_gate=gate,
        cli_before_gate=nothing_left,
        credentials=credentials,
        process_hidden=process_hidden,
    )
    # What start-up loaded lives as long as the process: frozen, no collection walks it
    # again; the collector is back on for what serving allocates.
    gc.freeze()
    gc.enable()
    _exit_at_once(run(settings))


def _exit_at_once(code: int) -> NoReturn:
    """End the process as soon as the runner is done, without Python's teardown (about
    0.1 s at a whole CPU, several times that at a small limit). The runner's port is
    closed by then, and the kubelet goes on probing readiness through a pod's termination:
    each probe in that gap meets a refused connection and becomes an `Unhealthy` Warning
    Event. Everything the runner wrote is flushed first; its children are gone."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _config_error(message: str) -> int:
    """Log why the runner cannot start (as JSON, like the rest of its log) and exit 2."""
    import logging

    from corral.runner import jsonlog
    from corral.runner.app import EXIT_CONFIG

    jsonlog.configure(None, None)
    jsonlog.log_event(logging.getLogger("corral.runner"), message, level=logging.ERROR)
    return EXIT_CONFIG


def _startup_probe_wait() -> float:
    """In a pod (the API server's address is in every pod's environment) the kubelet runs
    the startup probe; elsewhere nothing does. CORRAL_STARTUP_PROBE_WAIT_SECONDS overrides."""
    from corral.runner.app import STARTUP_PROBE_WAIT_SECONDS

    explicit = os.environ.get("CORRAL_STARTUP_PROBE_WAIT_SECONDS")
    if explicit:
        return float(explicit)
    return STARTUP_PROBE_WAIT_SECONDS if "KUBERNETES_SERVICE_HOST" in os.environ else 0.0
