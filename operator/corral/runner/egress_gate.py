"""Hold every CLI start until the pod's NetworkPolicy filters its egress.

A NetworkPolicy selects a pod from its first instant, but the node's policy agent enforces
it only once it has programmed the pod's address: kube-router (k3s's agent too) leaves a new
pod's egress open for its next sync after the pod appears, 0.41 to 0.87 s here
(docs/hardening.md). What runs then is the CLI's start, and the CLI runs what the agent
left for it on the state volume (a SessionStart hook in `.claude/settings.json`, an MCP
server), so an agent could reach past its policy on every wake.

The gate: a canary address that every session pod can reach without a policy and that no
session policy allows (the gateway's traffic port: its own policy admits everyone, and
session policies allow only its proxy ports). The runner connects to it, again and again,
until the policy shows: a try goes unanswered (dropped, or rejected as unreachable), or is
refused after the canary has answered (kube-router rejects with "port unreachable", which
reads as a refusal; while the kernel rate-limits those messages its tries time out). A
refusal before any answer proves nothing (a canary without endpoints is refused too) and is
tried again. After `max_wait` the gate opens anyway, and says so: a session whose own
egress allows the canary, or a policy agent that never syncs, must not keep the session
from starting, but an operator must see it.

Where nothing is left behind (a pod's first start: its workspace, state and home hold
nothing), there is nothing for a starting CLI to run: the CLI may then start before the
gate opens, and what the agent does (which begins with a message) waits for it instead.

This module must stay light: it starts before the runner's heavy imports.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.api.runtime import ENV_EGRESS_CANARY as ENV_CANARY
from corral.api.runtime import ENV_EGRESS_CANARY_MAX_WAIT as ENV_MAX_WAIT
from corral.api.runtime import ENV_EGRESS_CANARY_TRY as ENV_TRY_TIMEOUT

DEFAULT_MAX_WAIT = 5.0
# In a cluster a canary answers in well under a millisecond; an unanswered try this long
# is the policy dropping it.
DEFAULT_TRY_TIMEOUT = 0.15
# Between tries that were answered or refused: the policy agent syncs within a second.
RETRY_PAUSE = 0.02
# Errors that mean the packet was filtered on its way out (an ICMP "administratively
# prohibited", a local firewall's reject), not that the canary is missing.
FILTERED_ERRORS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM})


class Try(enum.Enum):
    ANSWERED = "answered"  # connected: nothing filters the pod's egress yet
    FILTERED = "filtered"  # dropped (no answer in time) or rejected on the way
    REFUSED = "refused"  # reached something that said no: inconclusive
    UNRESOLVED = "unresolved"  # the canary's name did not resolve: inconclusive


@dataclass(frozen=True)
class Canary:
    host: str
    port: int
    max_wait: float = DEFAULT_MAX_WAIT
    try_timeout: float = DEFAULT_TRY_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Canary | None:
        """The canary the operator set (None: no gate). Malformed: ValueError, naming it."""
        address = environ.get(ENV_CANARY, "").strip()
        if not address:
            return None
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{ENV_CANARY}={address!r} is not host:port")
        return cls(
            host=host.strip("[]"),
            port=int(port),
            max_wait=_seconds(environ, ENV_MAX_WAIT, DEFAULT_MAX_WAIT),
            try_timeout=_seconds(environ, ENV_TRY_TIMEOUT, DEFAULT_TRY_TIMEOUT),
        )


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise ValueError(f"{name}={text!r}: give more than 0 and at most 600 seconds")
    return value


class Prober:
    """Tries of one canary: its name resolved once (a Service's address does not move),
    then one connection attempt a call."""

    def __init__(self, canary: Canary) -> None:
        self.canary = canary
        self._address: tuple[Any, ...] | None = None  # getaddrinfo's first answer

    def __call__(self) -> tuple[Try, float]:
        """What became of one try, and how long its connection attempt took."""
        if self._address is None:
            try:
                infos = socket.getaddrinfo(
                    self.canary.host, self.canary.port, type=socket.SOCK_STREAM
                )
            except OSError:
                return Try.UNRESOLVED, 0.0
            self._address = infos[0]
        family, kind, proto, _, address = self._address
        sock = socket.socket(family, kind, proto)
        sock.settimeout(self.canary.try_timeout)
        started = time.monotonic()
        try:
            sock.connect(address)
        except TimeoutError:
            return Try.FILTERED, time.monotonic() - started
        except OSError as exc:
            outcome = Try.FILTERED if exc.errno in FILTERED_ERRORS else Try.REFUSED
            return outcome, time.monotonic() - started
        finally:
            sock.close()
        return Try.ANSWERED, time.monotonic() - started


@dataclass(frozen=True)
class GateResult:
    filtered: bool  # False: opened because max_wait passed
    waited: float  # seconds from the gate's start to its opening
    answered: int  # tries the canary answered (egress still open)
    refused: int  # tries refused (inconclusive: a canary without endpoints, say)
    unresolved: int  # tries whose canary name did not resolve (inconclusive)
    slowest_answer: float  # seconds: how close answers came to the try timeout
    error: str | None = None  # why the gate could not try at all (it opened unconfirmed)


def wait_until_filtered(
    canary: Canary,
    attempt: Callable[[], tuple[Try, float]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """Try the canary until a try is filtered, or `max_wait` passes."""
    attempt = attempt or Prober(canary)
    started = clock()
    counts = dict.fromkeys(Try, 0)
    slowest = 0.0
    while True:
        outcome, took = attempt()
        counts[outcome] += 1
        if outcome is Try.ANSWERED:
            slowest = max(slowest, took)
        # A refusal after an answer is the policy rejecting: the canary was up just now.
        filtered = outcome is Try.FILTERED or (outcome is Try.REFUSED and counts[Try.ANSWERED] > 0)
        if filtered or clock() - started >= canary.max_wait:
            return GateResult(
                filtered=filtered,
                waited=clock() - started,
                answered=counts[Try.ANSWERED],
                refused=counts[Try.REFUSED],
                unresolved=counts[Try.UNRESOLVED],
                slowest_answer=slowest,
            )
        sleep(RETRY_PAUSE)


class EgressGate:
    """The gate, run in a thread of its own from the runner's first moment."""

    def __init__(self, canary: Canary | None) -> None:
        self.canary = canary
        self.result: GateResult | None = None
        self._opened = threading.Event()
        self._waiting: Awaitable[bool] | None = None  # the async waiters' shared wait
        if canary is None:
            self._opened.set()

    def start(self) -> EgressGate:
        if self.canary is not None:
            threading.Thread(target=self._run, name="egress-gate", daemon=True).start()
        return self

    def _run(self) -> None:
        assert self.canary is not None
        started = time.monotonic()
        try:
            self.result = wait_until_filtered(self.canary)
        except Exception as exc:  # never hold the session for ever, whatever happened
            waited = time.monotonic() - started
            self.result = GateResult(False, waited, 0, 0, 0, 0.0, error=str(exc)[:300])
        finally:
            self._opened.set()

    def is_open(self) -> bool:
        return self._opened.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the gate opens (or `timeout` passes: False)."""
        return self._opened.wait(timeout)

    async def opened(self) -> None:
        """Wait for the gate without holding the event loop. Every waiter (an agent each,
        up to a Shared session's dozens) shares one thread of the default executor."""
        if self._opened.is_set():
            return
        import asyncio  # here: the runner's first moment has no use for it

        if self._waiting is None:
            self._waiting = asyncio.ensure_future(asyncio.to_thread(self._opened.wait))
        await asyncio.shield(self._waiting)


OPEN = EgressGate(None)  # no canary configured: nothing to wait for


def nothing_left_behind(directories: Iterable[Path]) -> bool:
    """True when none of `directories` holds anything (or exists): no file an agent could
    have left for a CLI to run as it starts. Read before the runner writes there itself;
    an entry of any kind (even one the runner cannot read) counts as something."""
    for directory in directories:
        try:
            with os.scandir(directory) as entries:
                if next(entries, None) is not None:
                    return False
        except FileNotFoundError:
            continue
        except OSError:
            return False  # not readable, not a directory: not known to be empty
    return True
