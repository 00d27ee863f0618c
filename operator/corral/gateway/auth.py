"""Who is calling (TokenReview) and may they (SubjectAccessReview on agentsessions/connect).

Both answers are cached briefly in bounded caches keyed by a hash of the token (the token
itself is never kept), so a busy client costs the API server one review per cache period,
not one per request. Concurrent misses for one key share a single review.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

from corral.gateway.limits import Limited
from corral.gateway.metrics import GatewayMetrics
from corral.kube.client import KubeClient
from corral.rate import KeyedBuckets

GROUP = "corral.dev"
RESOURCE = "agentsessions"
SUBRESOURCE = "connect"
K = TypeVar("K")
V = TypeVar("V")
# TokenReviews of tokens not cached, per second (and burst) per replica: a flood of made-up
# tokens must not become a flood of reviews on the API server, which the gateway's own
# requests (wakes, status) share under priority and fairness.
NEW_TOKENS_PER_SECOND = 50.0
NEW_TOKENS_BURST = 100
# Refused tokens are remembered apart, fewer of them: a flood of them cannot push the
# accepted ones out of their cache.
REFUSED_CACHE_SIZE = 1_000
NOT_ACCEPTED = "the token was not accepted by the Kubernetes API server"


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def review_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"user": self.name, "groups": list(self.groups)}
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {k: list(v) for k, v in self.extra}
        return spec


class Unauthenticated(Exception):
    """No token, or one the API server does not accept (401)."""


class Forbidden(Exception):
    """The user may not do this (403); the message names the missing permission."""


class _NotAccepted(Exception):
    """A TokenReview said no: remembered in the refused cache, not the users'."""


class _LoaderCancelled(Exception):
    """The request loading a value was cancelled: the others waiting on it load again."""


class ReviewCache(Generic[K, V]):
    """A TTL cache with single-flight loading and hit/miss counting."""

    def __init__(self, kind: str, size: int, ttl: float, metrics: GatewayMetrics) -> None:
        self._cache: TTLCache[K, V] = TTLCache(maxsize=size, ttl=ttl)
        self._loading: dict[K, asyncio.Future[V]] = {}
        self._kind = kind
        self._metrics = metrics

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        while True:
            try:
                value = self._cache[key]
            except KeyError:
                pass
            else:
                self._metrics.auth_cache.labels(kind=self._kind, result="hit").inc()
                return value
            pending = self._loading.get(key)
            if pending is None:
                return await self._load(key, load)
            self._metrics.auth_cache.labels(kind=self._kind, result="hit").inc()
            try:
                return await asyncio.shield(pending)
            except _LoaderCancelled:
                continue  # the loader's request was cancelled, not this one: load again

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        self._metrics.auth_cache.labels(kind=self._kind, result="miss").inc()
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as error:
            cancelled = isinstance(error, asyncio.CancelledError)
            future.set_exception(_LoaderCancelled() if cancelled else error)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._loading.pop(key, None)
        self._cache[key] = value
        future.set_result(value)
        return value


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Reviewer:
    """TokenReview and SubjectAccessReview through the gateway's own ServiceAccount."""

    def __init__(
        self,
        kube: KubeClient,
        metrics: GatewayMetrics,
        ttl_seconds: float = 10.0,
        cache_size: int = 10_000,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.users: ReviewCache[str, User] = ReviewCache("token", cache_size, ttl_seconds, metrics)
        self.refused: TTLCache[str, bool] = TTLCache(maxsize=REFUSED_CACHE_SIZE, ttl=ttl_seconds)
        self.new_tokens = KeyedBuckets(NEW_TOKENS_PER_SECOND, NEW_TOKENS_BURST, max_keys=1)
        self.decisions: ReviewCache[tuple[Any, ...], tuple[bool, str]] = ReviewCache(
            "access", cache_size, ttl_seconds, metrics
        )

    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise Unauthenticated(
                "no bearer token: send 'Authorization: Bearer TOKEN' (or X-Corral-Token "
                "through the API server's service proxy)"
            )
        key = token_key(token)
        if key in self.refused:
            raise Unauthenticated(NOT_ACCEPTED)
        try:
            return await self.users.get(key, lambda: self._token_review(token))
        except _NotAccepted:
            self.refused[key] = True
            raise Unauthenticated(NOT_ACCEPTED) from None

    async def authorize(self, user: User, verb: str, namespace: str, name: str) -> None:
        key = (user, verb, namespace, name)
        allowed, reason = await self.decisions.get(
            key, lambda: self._access_review(user, verb, namespace, name)
        )
        if not allowed:
            detail = f" ({reason})" if reason else ""
            raise Forbidden(
                f"user {user.name!r} may not {verb} {RESOURCE}/{SUBRESOURCE} in group "
                f"{GROUP} for session {namespace}/{name}{detail}; bind a Role granting "
                f"verb {verb!r} on resource '{RESOURCE}/{SUBRESOURCE}' (e.g. the ClusterRole "
                f"corral-session-{'user' if verb == 'create' else 'viewer'})"
            )

    async def _token_review(self, token: str) -> User:
        wait = self.new_tokens.take("")
        if wait is not None:
            raise Limited(
                "token-reviews",
                f"the gateway is reviewing over {NEW_TOKENS_PER_SECOND:g} new tokens a second; "
                "retry shortly",
                wait,
            )
        self.metrics.reviews.labels(kind="token").inc()
        review = await self.kube.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = review.get("status") or {}
        if not status.get("authenticated"):
            raise _NotAccepted()
        info = status.get("user") or {}
        extra = info.get("extra") or {}
        return User(
            name=str(info.get("username", "")),
            uid=str(info.get("uid", "")),
            groups=tuple(str(g) for g in info.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(x) for x in v)) for k, v in extra.items())),
        )

    async def _access_review(
        self, user: User, verb: str, namespace: str, name: str
    ) -> tuple[bool, str]:
        self.metrics.reviews.labels(kind="access").inc()
        spec = user.review_spec()
        spec["resourceAttributes"] = {
            "group": GROUP,
            "resource": RESOURCE,
            "subresource": SUBRESOURCE,
            "verb": verb,
            "namespace": namespace,
            "name": name,
        }
        review = await self.kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
        )
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")[:300]
