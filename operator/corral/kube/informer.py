"""List-then-watch of one kind with a server-side label selector, feeding a callback.

The operator watches its children (pods, Services, NetworkPolicies, PVCs) this way rather
than through kopf: the API server filters by `app.kubernetes.io/managed-by=corral`, so the
operator never receives the cluster's other pods, and each event costs a JSON decode and a
store update instead of a framework handler invocation. `synced` is set once the initial
list of every scope has been delivered, so callers can hold back decisions until then.

Lists are paginated (`limit`/`continue`), so a big namespace never arrives as one response.
After a relist, objects the informer knew but the list no longer holds are reported as
DELETED with the identity they last had (name, UID, controlling owner), as the watch would
have reported them: a consumer that keys on the owner sees them go.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import aiohttp

from corral.kube.client import ApiError, KubeClient, resource_path, retry_after_of
from corral.kube.managed_fields import LEAN_KINDS

log = logging.getLogger("corral.informer")
JSON = dict[str, Any]
Handler = Callable[[str, JSON], None]
WATCH_SECONDS = 300
# Objects per LIST page: a page of pods is a few MiB at most, whatever the namespace holds.
PAGE_SIZE = 500
# Backoff after a failed list or watch: from RETRY_SECONDS doubling up to MAX_RETRY_SECONDS.
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# A server's Retry-After is honoured up to this (a bogus value must not stall us for ever).
MAX_RETRY_AFTER_SECONDS = 600.0


def is_pattern(namespace: str) -> bool:
    return any(c in namespace for c in "*?[")


class Tombstone(NamedTuple):
    """What the informer remembers of an object: enough to report its deletion as the watch
    would (who controls it), not its labels, spec or status. A tuple of the strings the
    watch event already holds: about 1.5 KB less per object than a trimmed copy of its
    metadata (a dict per owner reference, its keys decoded again for every object), which
    was most of what a thousand sessions' children cost beyond the store's views."""

    kind: str
    namespace: str | None
    name: str | None
    uid: str | None
    resource_version: str | None
    # apiVersion, kind, name and uid of the controlling owner reference.
    owner: tuple[str, str, str, str] | None

    def body(self) -> JSON:
        """The object as a DELETED event reports it."""
        meta: JSON = {}
        fields = zip(
            ("namespace", "name", "uid", "resourceVersion"),
            (self.namespace, self.name, self.uid, self.resource_version),
            strict=True,
        )
        for field, value in fields:
            if value is not None:
                meta[field] = value
        if self.owner is not None:
            api_version, kind, name, uid = self.owner
            owner = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}
            meta["ownerReferences"] = [{**owner, "controller": True}]
        return {"kind": self.kind, "metadata": meta}


def tombstone(kind: str, body: JSON) -> Tombstone:
    meta = body.get("metadata") or {}
    owner = None
    for reference in meta.get("ownerReferences") or []:
        if isinstance(reference, dict) and reference.get("controller"):
            owner = (
                sys.intern(str(reference.get("apiVersion"))),
                sys.intern(str(reference.get("kind"))),
                str(reference.get("name")),
                str(reference.get("uid")),
            )
            break
    namespace = meta.get("namespace")
    return Tombstone(
        kind=sys.intern(str(body.get("kind") or kind)),
        namespace=sys.intern(namespace) if isinstance(namespace, str) else None,
        name=meta.get("name"),
        uid=meta.get("uid"),
        resource_version=meta.get("resourceVersion"),
        owner=owner,
    )


class Backoff:
    """Exponential backoff with jitter, capped; a server's Retry-After is a lower bound."""

    def __init__(
        self,
        base: float = RETRY_SECONDS,
        cap: float = MAX_RETRY_SECONDS,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.rand = rand
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        # "Equal jitter": at least half the ceiling, so retries never bunch up at zero.
        delay = ceiling / 2 + self.rand() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    def reset(self) -> None:
        self.failures = 0


class Informer:
    def __init__(
        self,
        client: KubeClient,
        kind: str,
        label_selector: str,
        on_event: Handler,
        namespaces: Sequence[str] = (),
        page_size: int = PAGE_SIZE,
        on_relist: Callable[[], None] | None = None,
    ) -> None:
        """`namespaces`: empty for all; names are watched one by one (works with namespaced
        RBAC); any glob pattern makes it one cluster-wide watch filtered here."""
        self.client = client
        self.kind = kind
        # Built-in kinds are parsed without their managedFields (corral.kube.managed_fields).
        self._lean = kind in LEAN_KINDS
        self.selector = label_selector
        self.on_event = on_event
        self.page_size = page_size
        # Called before every list but the first: the watch was lost, so whatever else
        # the caller watches may have missed events too (see Controller.sessions_current).
        self.on_relist = on_relist
        self.patterns = [n for n in namespaces if is_pattern(n)]
        # With a glob, one cluster-wide watch keeps what matches any name or glob given
        # (matching only the globs dropped the named namespaces' objects).
        self.wanted = list(namespaces) if self.patterns else []
        if not namespaces or self.patterns:
            self.scopes: list[str | None] = [None]
        else:
            self.scopes = list(dict.fromkeys(namespaces))
        self.synced = asyncio.Event()
        self._synced_scopes: set[str | None] = set()

    def _wanted(self, body: JSON) -> bool:
        if not self.wanted:
            return True
        namespace = body.get("metadata", {}).get("namespace", "")
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.wanted)

    async def run(self) -> None:
        await asyncio.gather(*(self._run_scope(scope) for scope in self.scopes))

    async def _run_scope(self, scope: str | None) -> None:
        known: dict[tuple[str, str], Tombstone] = {}
        version = ""
        backoff = Backoff()
        where = scope or "all namespaces"
        while True:
            try:
                if not version:
                    if scope in self._synced_scopes and self.on_relist is not None:
                        self.on_relist()
                    version = await self._relist(scope, known)
                version = await self._watch(scope, version, known, backoff)
            except ApiError as error:
                if error.status == 410:  # our resourceVersion is too old: list again at once
                    version = ""
                    continue
                log.warning("%s watch (%s): %s", self.kind, where, error)
                version = ""
                await self._pause(backoff.next_delay(error.retry_after))
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                # The connection broke: watch again from where we were (the server replays).
                log.warning("%s watch (%s) broke: %r", self.kind, where, error)
                await self._pause(backoff.next_delay())
            except Exception:  # anything else must not end the watch (and the operator)
                log.exception("%s watch (%s) failed; listing again", self.kind, where)
                version = ""
                await self._pause(backoff.next_delay())

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _emit(self, kind: str, body: JSON, known: dict[tuple[str, str], Tombstone]) -> None:
        meta = body.get("metadata", {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED":
            known.pop(key, None)
        else:
            known[key] = tombstone(self.kind, body)
        if self._wanted(body):
            try:
                self.on_event(kind, body)
            except Exception:  # a bad object must not stop the watch for everyone else
                log.exception("%s event handler failed", self.kind)

    async def _pages(self, scope: str | None) -> AsyncIterator[JSON]:
        """The LIST of one scope, page by page (all from the first page's snapshot; an
        expired continue token is a 410)."""
        params = {"labelSelector": self.selector, "limit": str(self.page_size)}
        path = resource_path(self.kind, scope)
        while True:
            page = await self.client.request("GET", path, params=params, lean=self._lean)
            yield page
            more = (page.get("metadata") or {}).get("continue")
            if not more:
                return
            params = {**params, "continue": str(more)}

    async def snapshot(self) -> tuple[list[JSON], int]:
        """Every wanted object as the API server has it now, and the oldest resourceVersion
        of the scopes' lists (each object newer than that was not necessarily in it)."""
        items: list[JSON] = []
        versions: list[int] = []
        for scope in self.scopes:
            page: JSON = {}
            async for page in self._pages(scope):
                for item in page.get("items") or []:
                    item.setdefault("kind", self.kind)
                    if self._wanted(item):
                        items.append(item)
            versions.append(int((page.get("metadata") or {}).get("resourceVersion") or 0))
        return items, min(versions, default=0)

    async def _relist(self, scope: str | None, known: dict[tuple[str, str], Tombstone]) -> str:
        present: set[tuple[str, str]] = set()
        page: JSON = {}
        async for page in self._pages(scope):
            for item in page.get("items") or []:
                item.setdefault("kind", self.kind)
                meta = item.get("metadata") or {}
                present.add((str(meta.get("namespace")), str(meta.get("name"))))
                self._emit("ADDED", item, known)
        for key in [k for k in known if k not in present]:
            # Gone while we were not watching: say so, as the watch would have.
            self._emit("DELETED", known[key].body(), known)
        self._synced_scopes.add(scope)
        if len(self._synced_scopes) == len(self.scopes):
            self.synced.set()
        return str(page["metadata"]["resourceVersion"])

    async def _watch(
        self,
        scope: str | None,
        version: str,
        known: dict[tuple[str, str], Tombstone],
        backoff: Backoff,
    ) -> str:
        params = {
            "watch": "1",
            "labelSelector": self.selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        path = resource_path(self.kind, scope)
        async for event in self.client.stream(path, params, lean=self._lean):
            kind = event.get("type")
            body = event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(
                    int(body.get("code", 500)),
                    str(body.get("reason")),
                    str(body.get("message")),
                    retry_after_of(None, body),
                )
            backoff.reset()  # the server is answering again
            version = str(body.get("metadata", {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            self._emit(str(kind), body, known)
        return version
