"""Which session a gateway request is for, and which permission it needs.

Paths are `/sessions/{namespace}/{name}/{runner path}`. Every runner endpoint of
docs/runner.md is reachable except the probes: reading (status, transcript, metrics) needs
`get` on the virtual subresource `agentsessions/connect`, anything that makes the agent act
(messages, interrupt, conversation, the WebSocket) needs `create`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 1123 label (namespaces) and subdomain (object names), as the API server checks them.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)

PREFIX = "/sessions/"


@dataclass(frozen=True)
class Endpoint:
    method: str
    verb: str  # the RBAC verb on agentsessions/connect
    websocket: bool = False
    streams: bool = False  # may answer with a long-lived SSE body


# runner path -> the methods it serves through the gateway
ENDPOINTS: dict[str, tuple[Endpoint, ...]] = {
    "/v1/status": (Endpoint("GET", "get"),),
    "/v1/transcript": (Endpoint("GET", "get"),),
    "/metrics": (Endpoint("GET", "get"),),
    "/v1/messages": (Endpoint("POST", "create", streams=True),),
    "/v1/interrupt": (Endpoint("POST", "create"),),
    "/v1/conversation": (Endpoint("POST", "create", streams=True),),
    "/v1/stream": (Endpoint("GET", "create", websocket=True),),
}


class RouteError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Route:
    namespace: str
    name: str
    runner_path: str
    endpoint: Endpoint

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def parse(method: str, path: str) -> Route:
    """The route of a request, or RouteError: 400 for a malformed path, 404 for an unknown
    endpoint, 405 for a method the endpoint does not serve."""
    if not path.startswith(PREFIX):
        raise RouteError(404, f"no such path {path[:200]!r}; use /sessions/NAMESPACE/NAME/...")
    parts = path[len(PREFIX) :].split("/", 2)
    if len(parts) < 3 or not parts[2]:
        raise RouteError(400, "malformed path: use /sessions/NAMESPACE/NAME/v1/...")
    namespace, name, rest = parts
    if not _LABEL.match(namespace):
        raise RouteError(400, f"malformed path: {namespace[:80]!r} is not a namespace name")
    if not _SUBDOMAIN.match(name):
        raise RouteError(400, f"malformed path: {name[:80]!r} is not a session name")
    runner_path = "/" + rest
    endpoints = ENDPOINTS.get(runner_path)
    if endpoints is None:
        raise RouteError(
            404, f"no such session endpoint {runner_path[:200]!r} (see docs/runner.md)"
        )
    for endpoint in endpoints:
        if endpoint.method == method:
            return Route(namespace, name, runner_path, endpoint)
    allowed = ", ".join(e.method for e in endpoints)
    raise RouteError(405, f"{method} is not served on {runner_path}; use {allowed}")
