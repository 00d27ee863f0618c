"""A small asyncio client for the few Kubernetes REST calls the operator makes.

The official client is synchronous and builds a model object per response; the operator
only creates, patches and deletes a handful of kinds, so it speaks JSON over one pooled
aiohttp session instead. Credentials: corral.kube.credentials.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydantic_core
from prometheus_client import Counter

from corral.kube.credentials import Connection as Connection
from corral.kube.credentials import load_connection as load_connection
from corral.kube.managed_fields import LEAN_KINDS, without_managed_fields
from corral.stream_lines import bounded_lines

JSON = dict[str, Any]
# Every watch event and answer is decoded here, most of them pods of about 8 KB: pydantic's
# JSON parser (jiter, installed with pydantic) reads them from the bytes received in about
# 0.6 of the time `json.loads` takes, with no text decoding first. Same values, and a
# ValueError for what is not JSON. Its writer, likewise, makes the bodies sent in a quarter
# of the time of `json.dumps` and its encoding to bytes (bench/json_decode.py).
decode_json = pydantic_core.from_json
encode_json = pydantic_core.to_json
# Failures on the way to the API server, not answers from it (a reset, a refused connection,
# the client's timeout): the request may or may not have been carried out.
CONNECTION_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)
# Every request the operator makes, by verb and kind: the API cost of a session.
REQUESTS = Counter(
    "corral_kube_requests_total", "Kubernetes API requests made by the operator.", ["verb", "kind"]
)
MERGE_PATCH = "application/merge-patch+json"
# Merges lists of named items (a pod's containers) by name rather than replacing them.
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# Accept header of a GET that returns only an object's metadata (PartialObjectMetadata).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

# api group/version and plural of every kind the operator writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("v1", "pods"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Event": ("v1", "events"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "AgentSession": ("corral.dev/v1alpha1", "agentsessions"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
}


class ApiError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        # Seconds the server asked us to wait (Retry-After, or a Status' retryAfterSeconds).
        self.retry_after = retry_after

    @property
    def namespace_gone(self) -> bool:
        """The namespace is deleted or being deleted: nothing more can be made in it."""
        text = self.message.lower()
        return (self.status == 403 and "being terminated" in text) or (
            self.status == 404 and "namespaces" in text
        )


# How much of a body that is not JSON (a proxy's HTML error page) an ApiError quotes.
ERROR_TEXT_CHARS = 200


def retry_after_of(header: str | None, payload: JSON) -> float | None:
    """The wait the server asked for: the Retry-After header (seconds) or the Status body's
    `details.retryAfterSeconds`; None when it asked for none."""
    if header:
        try:
            return max(float(header), 0.0)
        except ValueError:
            pass  # an HTTP date: rare from the API server; our own backoff applies
    details = payload.get("details")
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None


def _decode(raw: bytes, lean: bool) -> Any:
    """Parsed JSON; `lean`: built-in objects without their managedFields (a cut the parser
    refuses, which the API server's shape rules out, is parsed again whole)."""
    if lean:
        cut = without_managed_fields(raw)
        if cut is not raw:
            with contextlib.suppress(ValueError):
                return decode_json(cut)
    return decode_json(raw)


async def _read_payload(response: aiohttp.ClientResponse, lean: bool = False) -> JSON:
    """The JSON body of a response. A body that is not a JSON object (a load balancer's error
    page, a connection cut mid-body) becomes an ApiError rather than a ValueError that
    callers do not expect."""
    if response.content_length == 0:
        return {}
    raw = await response.read()
    if not raw or raw.isspace():  # (no copy of a list's megabytes, as strip() makes)
        return {}
    try:
        payload = _decode(raw, lean)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        text = raw.decode(errors="replace")
        reason = response.reason if response.status >= 400 else "InvalidResponse"
        raise ApiError(
            response.status if response.status >= 400 else 502,
            str(reason or "InvalidResponse"),
            f"response is not JSON: {text[:ERROR_TEXT_CHARS]!r}",
            retry_after_of(response.headers.get("Retry-After"), {}),
        )
    return payload


def _error(response: aiohttp.ClientResponse, payload: JSON) -> ApiError:
    return ApiError(
        response.status,
        str(payload.get("reason") or response.reason),
        str(payload.get("message", "")),
        retry_after_of(response.headers.get("Retry-After"), payload),
    )


def _kind_of(path: str) -> str:
    """The resource a request path names (`pods`, `agentsessions/status`), for metrics."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2 :]
    elif parts[:1] == ["api"]:
        parts = parts[2:]
    else:
        parts = parts[3:]
    return "/".join(parts[:1] + parts[2:3]) if parts else "unknown"


def resource_path(
    kind: str, namespace: str | None, name: str | None = None, sub: str | None = None
) -> str:
    api_version, plural = RESOURCES[kind]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


# Projected ServiceAccount tokens rotate (hourly by default): read the file again this often.
TOKEN_REFRESH_SECONDS = 60.0
# One watch event's JSON: an object is at most 1.5 MiB in etcd, and JSON escaping (a
# prompt of `<` and `>` becomes \u003c, six bytes each) can grow it several times.
MAX_WATCH_LINE_BYTES = 32 * 1024 * 1024
# A watch that sends nothing (not even a bookmark) for this long is considered broken.
STREAM_IDLE_SECONDS = 330.0


class KubeClient:
    def __init__(self, connection: Connection, max_connections: int = 64) -> None:
        self.connection = connection
        headers = {"Accept": "application/json"}
        if connection.token:
            headers["Authorization"] = connection.token
        connector = aiohttp.TCPConnector(ssl=connection.ssl_context, limit=max_connections)
        self._session = aiohttp.ClientSession(
            base_url=connection.server,
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.requests_made = 0
        self._token = connection.token
        self._token_read_at = time.monotonic()

    def _authorization(self) -> dict[str, str] | None:
        """A fresh Authorization header when the token lives in a rotating file."""
        path = self.connection.token_file
        if path is None:
            return None
        if time.monotonic() - self._token_read_at > TOKEN_REFRESH_SECONDS:
            with contextlib.suppress(OSError):
                self._token = "Bearer " + Path(path).read_text().strip()
            self._token_read_at = time.monotonic()
        return {"Authorization": self._token} if self._token else None

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: JSON | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        accept: str | None = None,
        lean: bool = False,
    ) -> JSON:
        """`lean`: the answer is built-in objects (managed_fields.LEAN_KINDS), parsed
        without their managedFields."""
        self.requests_made += 1
        REQUESTS.labels(verb=method, kind=_kind_of(path)).inc()
        headers = {"Content-Type": content_type} if body is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        headers.update(self._authorization() or {})
        data = encode_json(body) if body is not None else None
        async with self._session.request(
            method, path, data=data, headers=headers, params=params
        ) as response:
            payload = await _read_payload(response, lean)
            if response.status >= 400:
                raise _error(response, payload)
            return payload

    async def stream(
        self, path: str, params: dict[str, str], lean: bool = False
    ) -> AsyncIterator[JSON]:
        """The events of a watch request, one JSON object per line, until the server ends it
        (`lean`: as for `request`)."""
        REQUESTS.labels(verb="WATCH", kind=_kind_of(path)).inc()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=STREAM_IDLE_SECONDS)
        async with self._session.get(
            path, params=params, timeout=timeout, headers=self._authorization()
        ) as response:
            if response.status >= 400:
                raise _error(response, await _read_payload(response))
            async for line in bounded_lines(response.content, MAX_WATCH_LINE_BYTES):
                if not line.isspace():  # (bounded_lines yields no empty line)
                    yield _decode(line, lean)

    async def create(self, manifest: JSON) -> JSON:
        kind, meta = manifest["kind"], manifest["metadata"]
        path = resource_path(kind, meta.get("namespace"))
        return await self.request("POST", path, manifest, lean=kind in LEAN_KINDS)

    async def get(self, kind: str, namespace: str | None, name: str) -> JSON:
        return await self.request("GET", resource_path(kind, namespace, name))

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: JSON,
        sub: str | None = None,
        strategic: bool = False,
    ) -> JSON:
        path = resource_path(kind, namespace, name, sub)
        content_type = STRATEGIC_MERGE_PATCH if strategic else MERGE_PATCH
        return await self.request("PATCH", path, patch, content_type=content_type)

    async def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str | None = None,
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete, guarded by UID so a same-named successor is never hit. False when the
        object was already gone: 404, or 409 (the name now belongs to another UID)."""
        options: JSON = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            await self.request("DELETE", resource_path(kind, namespace, name), options)
        except ApiError as error:
            if error.status not in (404, 409):
                raise
            return False
        return True
