"""`corral probe`: a startup probe that waits for readiness instead of failing until then,
and (`--listening`) a postStart hook that waits until the runner listens.

The kubelet posts a Warning Event (`Unhealthy`) for every failed probe, so an HTTP
startup probe that polls a process still importing its modules fills a clean start with
warnings. Run as an exec startup probe, this waits inside the container until the HTTP
readiness endpoint answers 200 and succeeds then; at the deadline it still succeeds if
the process is alive (the liveness endpoint answers), leaving a slow start to the
readiness probe, and fails only when nothing answers (the container is restarted, as
with the HTTP probe it replaces). Standard library only: it starts in milliseconds.

With `--listening` it waits, reading the network namespace's socket table (no connection
made), until something listens on the port, and always exits 0. As a postStart hook it
holds back the kubelet's first readiness probe: the kubelet reports the container running,
and probes it, only once the hook is done, so that probe never meets a refused connection
(each refused probe is an `Unhealthy` Warning Event). It never fails a start: a runner that
does not listen within the bound is left to the probes.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    # No help=: run by the kubelet, left out of `corral --help`.
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "probe",
        description="Wait until http://127.0.0.1:PORT/READY answers 200 (exit 0); at the "
        "deadline exit 0 if /LIVE answers 200, else 1. An exec startup probe.",
    )
    parser.add_argument("--port", type=int, required=True, help="the HTTP port to probe")
    parser.add_argument("--ready", default="/readyz", help="readiness path")
    parser.add_argument("--live", default="/healthz", help="liveness path")
    parser.add_argument("--within", type=float, default=50.0, help="seconds to wait")
    parser.add_argument(
        "--listening",
        action="store_true",
        help="only wait (at most --within) until the port listens; always exit 0",
    )
    parser.set_defaults(handler=run)


def answers_ok(port: int, path: str) -> bool:
    """Whether GET path answers 200. A bare socket, not urllib: the probe runs beside a
    starting runner, and urllib's imports cost more CPU than the whole probe."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status_line = conn.makefile("rb").readline(256)
    except OSError:
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[1] == b"200"


def wait_ready(port: int, ready: str, live: str, within: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if answers_ok(port, ready):
            return True
        time.sleep(interval)
    return answers_ok(port, live)


SOCKET_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"


def listening(port: int, tables: tuple[str, ...] = SOCKET_TABLES) -> bool:
    """Whether a TCP socket of this network namespace listens on port (any address)."""
    suffix = f":{port:04X}"
    for table in tables:
        try:
            with open(table) as rows:
                next(rows, None)  # the header
                for row in rows:
                    fields = row.split()
                    if len(fields) > 3 and fields[3] == TCP_LISTEN and fields[1].endswith(suffix):
                        return True
        except OSError:
            continue
    return False


def wait_listening(port: int, within: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + within
    while not listening(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def run(args: argparse.Namespace) -> int:
    if args.listening:
        wait_listening(args.port, args.within)
        return 0
    return 0 if wait_ready(args.port, args.ready, args.live, args.within) else 1


def main() -> int:
    """`python -m corral.probe`: what pods run (no import of the `corral` command's tree)."""
    parser = argparse.ArgumentParser(prog="python -m corral.probe")
    register(parser.add_subparsers())
    return run(parser.parse_args(["probe", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
