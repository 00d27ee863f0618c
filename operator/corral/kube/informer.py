"""List-then-watch of one kind with a server-side label selector, feeding a callback.

The operator watches its children (pods, Services, NetworkPolicies, PVCs) this way rather
than through kopf: the API server filters by `app.kubernetes.io/managed-by=corral`, so the
operator never receives the cluster's other pods, and each event costs a JSON decode and a
store update instead of a framework handler invocation. `synced` is set once the initial
list of every scope has been delivered, so callers can hold back decisions until then.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from corral.kube.client import ApiError, KubeClient, resource_path

log = logging.getLogger("corral.informer")
JSON = dict[str, Any]
Handler = Callable[[str, JSON], None]
WATCH_SECONDS = 300
RETRY_SECONDS = 1.0


def is_pattern(namespace: str) -> bool:
    return any(c in namespace for c in "*?[")


class Informer:
    def __init__(
        self,
        client: KubeClient,
        kind: str,
        label_selector: str,
        on_event: Handler,
        namespaces: Sequence[str] = (),
    ) -> None:
        """`namespaces`: empty for all; names are watched one by one (works with namespaced
        RBAC); any glob pattern makes it one cluster-wide watch filtered here."""
        self.client = client
        self.kind = kind
        self.selector = label_selector
        self.on_event = on_event
        self.patterns = [n for n in namespaces if is_pattern(n)]
        if not namespaces or self.patterns:
            self.scopes: list[str | None] = [None]
        else:
            self.scopes = list(dict.fromkeys(namespaces))
        self.synced = asyncio.Event()
        self._synced_scopes: set[str | None] = set()

    def _wanted(self, body: JSON) -> bool:
        if not self.patterns:
            return True
        namespace = body.get("metadata", {}).get("namespace", "")
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.patterns)

    async def run(self) -> None:
        await asyncio.gather(*(self._run_scope(scope) for scope in self.scopes))

    async def _run_scope(self, scope: str | None) -> None:
        known: dict[tuple[str, str], JSON] = {}
        version = ""
        while True:
            try:
                if not version:
                    version = await self._relist(scope, known)
                version = await self._watch(scope, version, known)
            except asyncio.CancelledError:
                raise
            except ApiError as error:
                if error.status == 410:  # our resourceVersion is too old: list again
                    version = ""
                    continue
                log.warning("%s watch (%s): %s", self.kind, scope or "all namespaces", error)
                version = ""
                await asyncio.sleep(RETRY_SECONDS)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning("%s watch (%s) broke: %s", self.kind, scope or "all", error)
                await asyncio.sleep(RETRY_SECONDS)

    def _emit(self, kind: str, body: JSON, known: dict[tuple[str, str], JSON]) -> None:
        meta = body.get("metadata", {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED":
            known.pop(key, None)
        else:
            known[key] = {"metadata": {"namespace": key[0], "name": key[1]}}
        if self._wanted(body):
            self.on_event(kind, body)

    async def _relist(self, scope: str | None, known: dict[tuple[str, str], JSON]) -> str:
        listed = await self.client.request(
            "GET", resource_path(self.kind, scope), params={"labelSelector": self.selector}
        )
        items = listed.get("items", [])
        present = set()
        for item in items:
            item.setdefault("kind", self.kind)
            meta = item["metadata"]
            present.add((meta.get("namespace"), meta.get("name")))
            self._emit("ADDED", item, known)
        for key in [k for k in known if k not in present]:
            # Gone while we were not watching: say so, as the watch would have.
            stub = {"kind": self.kind, "metadata": {"namespace": key[0], "name": key[1]}}
            self._emit("DELETED", stub, known)
        self._synced_scopes.add(scope)
        if len(self._synced_scopes) == len(self.scopes):
            self.synced.set()
        return str(listed["metadata"]["resourceVersion"])

    async def _watch(
        self, scope: str | None, version: str, known: dict[tuple[str, str], JSON]
    ) -> str:
        params = {
            "watch": "1",
            "labelSelector": self.selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async for event in self.client.stream(resource_path(self.kind, scope), params):
            kind = event.get("type")
            body = event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(
                    int(body.get("code", 500)), str(body.get("reason")), str(body.get("message"))
                )
            version = str(body.get("metadata", {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            try:
                self._emit(str(kind), body, known)
            except Exception:  # a bad object must not stop the watch for everyone else
                log.exception("%s event handler failed", self.kind)
        return version
