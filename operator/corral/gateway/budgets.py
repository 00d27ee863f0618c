"""Budgets and per-session rate limits of the model proxy: pure decisions.

A refusal is a `Denial` with the HTTP status and Messages API error type the CLI
understands: 429 `rate_limit_error` with Retry-After for the per-minute limits (the CLI
waits and retries), 402 `billing_error` naming the budget when money is spent (not
retried: the CLI ends the turn and shows the message).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

# 402 billing_error: the CLI neither retries it (it does retry a 400) nor mistakes it
# for a login problem (as it does a 403); it ends the turn with the message.
BUDGET_STATUS = 402
BUDGET_ERROR = "billing_error"
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Denial:
    status: int
    error_type: str
    message: str
    reason: str  # metric label and condition reason: a fixed word
    retry_after: int | None = None


def session_budget(max_usd: float | None, spent_usd: float) -> Denial | None:
    """Refuse when the session's metered cost has reached spec.maxBudgetUsd."""
    if max_usd is None or spent_usd < max_usd:
        return None
    return Denial(
        BUDGET_STATUS,
        BUDGET_ERROR,
        f"corral: this session's budget is spent: spec.maxBudgetUsd is {max_usd:.2f} USD and "
        f"the model calls metered by the gateway cost {spent_usd:.4f} USD; raise "
        "spec.maxBudgetUsd to continue",
        "SessionBudget",
    )


def namespace_budget(namespace: str, max_usd: float | None, spent_usd: float) -> Denial | None:
    """Refuse when the namespace's metered cost has reached the admin's budget for it."""
    if max_usd is None or spent_usd < max_usd:
        return None
    return Denial(
        BUDGET_STATUS,
        BUDGET_ERROR,
        f"corral: the budget of namespace {namespace} is spent: the operator's "
        f"modelProxy.namespaceBudgetsUsd allows {max_usd:.2f} USD and its sessions' model "
        f"calls cost {spent_usd:.4f} USD; ask your platform admin to raise it",
        "NamespaceBudget",
    )


# How long a call asked to wait for calls in flight is told to wait (the CLI retries a 429
# after its retry-after, several times, before it gives up on the turn).
IN_FLIGHT_RETRY_SECONDS = 5
# Calls of one session in flight at once (bodies being read included): beyond any agent's
# parallel tool calls, and a bound on the request bodies one session holds in memory.
MAX_CALLS_IN_FLIGHT = 32


def in_flight_budget(
    scope: str, max_usd: float | None, spent_usd: float, reserved_usd: float, reason: str
) -> Denial | None:
    """Ask a call to wait while the calls in flight could spend what is left of a budget:
    each holds, until it is metered, its most possible output cost and, for its input, the
    session's last metered prompt cost, so parallel calls cannot together overshoot by
    more than one call's worth and their prompts' growth."""
    if max_usd is None or reserved_usd <= 0 or spent_usd + reserved_usd < max_usd:
        return None
    return Denial(
        429,
        "rate_limit_error",
        f"corral: {scope} has model calls in flight that could cost {reserved_usd:.4f} USD, "
        f"and {max_usd - spent_usd:.4f} USD of its {max_usd:.2f} USD budget is left; "
        "this call waits until they end",
        reason,
        IN_FLIGHT_RETRY_SECONDS,
    )


def too_many_in_flight(calls: int) -> Denial | None:
    if calls < MAX_CALLS_IN_FLIGHT:
        return None
    return Denial(
        429,
        "rate_limit_error",
        f"corral: this session has {calls} model calls in flight (at most "
        f"{MAX_CALLS_IN_FLIGHT}); retry when some end",
        "CallsInFlight",
        1,
    )


@dataclass
class _Window:
    requests: float  # token bucket of requests
    updated: float
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0


class SessionLimits:
    """Requests/min (a token bucket with a burst of one minute's worth) and tokens/min (the
    tokens of calls finished in the last 60 s) per session. Bounded: the least recently
    seen sessions are forgotten beyond `max_sessions`."""

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.max_sessions = max_sessions
        self.clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def _window(self, session: str, now: float) -> _Window:
        window = self._windows.pop(session, None) or _Window(float(self.rpm), now)
        self._windows[session] = window
        while len(self._windows) > self.max_sessions:
            self._windows.popitem(last=False)
        while window.tokens and window.tokens[0][0] <= now - WINDOW_SECONDS:
            window.token_sum -= window.tokens.popleft()[1]
        return window

    def take(self, session: str) -> Denial | None:
        """Count one model call, or say why not now."""
        now = self.clock()
        window = self._window(session, now)
        if self.tpm and window.token_sum >= self.tpm:
            wait = window.tokens[0][0] + WINDOW_SECONDS - now
            return Denial(
                429,
                "rate_limit_error",
                f"corral: this session used {window.token_sum} tokens in the last minute; "
                f"the limit is {self.tpm} tokens/min (modelProxy.tokensPerMinute)",
                "TokensPerMinute",
                max(1, math.ceil(wait)),
            )
        if self.rpm:
            window.requests = min(
                float(self.rpm), window.requests + (now - window.updated) * self.rpm / 60.0
            )
            window.updated = now
            if window.requests < 1.0:
                wait = (1.0 - window.requests) * 60.0 / self.rpm
                return Denial(
                    429,
                    "rate_limit_error",
                    f"corral: this session is over {self.rpm} model calls/min "
                    "(modelProxy.requestsPerMinute)",
                    "RequestsPerMinute",
                    max(1, math.ceil(wait)),
                )
            window.requests -= 1.0
        return None

    def used(self, session: str, tokens: int) -> None:
        """Count the tokens of a finished call."""
        if tokens <= 0 or not self.tpm:
            return
        now = self.clock()
        window = self._window(session, now)
        window.tokens.append((now, tokens))
        window.token_sum += tokens
