"""Errors of the client: one line that says what went wrong and what to do about it."""

from __future__ import annotations

import contextlib
import json
from typing import Any


class CorralError(Exception):
    """Something the user can act on; `str()` is the whole one-line message."""

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint
        self.status = status


class NotFound(CorralError):
    """No such session (or no pod / endpoint for it)."""


# What to do for each answer of the gateway (docs/gateway.md "Errors").
GATEWAY_HINTS: dict[int, str] = {
    400: "check the session reference: NAMESPACE/NAME",
    401: "your token was not accepted: refresh your kubeconfig credentials "
    "(e.g. `kubectl create token`), or check CORRAL_GATEWAY_URL",
    403: "ask an admin to bind you a Role with verbs create and get on "
    "agentsessions/connect (the ClusterRole corral-session-user)",
    404: "check the name with `corral ls -n NAMESPACE`",
    409: "the session is suspended (`corral resume NS/NAME`) or busy with another "
    "message (wait for its result, or interrupt it)",
    410: "the session has finished: read its result with `corral ls`, or create a new one",
    413: "the message is too long (over 256 KiB)",
    429: "too many requests or open streams: wait a moment and try again",
    502: "the session's runner could not be reached: retry, or see `corral logs NS/NAME`",
    503: "the session did not become ready in time: retry, or see `kubectl describe ags`",
}


def gateway_error(status: int, body: bytes | str, session: str) -> CorralError:
    """The error for a refused gateway request (JSON `{"error": ...}`), or for an API server
    Status when the refusal came from the service proxy before the gateway."""
    parsed: Any = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        return _proxy_error(status, str(parsed.get("message", "")))
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    message = str(parsed.get("error")) if isinstance(parsed, dict) else text.strip()[:300]
    message = message or f"HTTP {status}"
    error_class = NotFound if status == 404 else CorralError
    return error_class(f"{session}: {message}", GATEWAY_HINTS.get(status, ""), status)


def _proxy_error(status: int, message: str) -> CorralError:
    """The API server answered for the gateway Service itself (service proxy)."""
    if status == 403:
        hint = (
            "ask an admin to grant you get/create on services/proxy of the gateway "
            "Service (the chart's corral-session-user role), or set CORRAL_GATEWAY_URL"
        )
    elif status in (404, 503):
        hint = (
            "the gateway Service is not there or has no ready pod: check "
            "--gateway-namespace/--gateway-service, or set CORRAL_GATEWAY_URL"
        )
    elif status == 401:
        hint = "the API server did not accept your credentials: check your kubeconfig"
    else:
        hint = ""
    return CorralError(f"API server service proxy: {message[:300] or status}", hint, status)


def api_error(status: int, body: dict[str, Any], what: str) -> CorralError:
    """An error answer of the Kubernetes API server, for `what` (e.g. "session demo/chat")."""
    message = str(body.get("message") or body.get("reason") or f"HTTP {status}")[:500]
    if status == 401:
        return CorralError(
            "the Kubernetes API server did not accept your credentials",
            "check your kubeconfig (`kubectl auth whoami`)",
            status,
        )
    if status == 403:
        return CorralError(message, "ask an admin for RBAC on agentsessions.corral.dev", status)
    if status == 404:
        return NotFound(f"no {what}", "check the name with `corral ls -n NAMESPACE`", status)
    if status == 409:
        return CorralError(message, "", status)
    if status == 422:
        return CorralError(f"invalid {what}: {message}", "fix the named field", status)
    return CorralError(f"{what}: {message}", "", status)
