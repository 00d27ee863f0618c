"""Which real key a session's model calls go upstream with: its namespace's own, or the
gateway's.

A namespace listed in `modelProxy.namespaceKeys` pays with its own account: its sessions'
calls carry the ANTHROPIC_API_KEY of the named Secret in that namespace, read through the
API (the chart grants the gateway `get` on exactly that Secret) and kept for
`keyRefreshSeconds`, so a rotated or removed key takes effect within that time. A listed
namespace whose Secret cannot be read gets no key at all, never the gateway's: that would
bill another account. Other namespaces use the gateway's key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from corral.api import runtime
from corral.kube.client import ApiError, KubeClient

# A Secret that could not be read is asked for again after this long, not on every call.
RETRY_SECONDS = 5.0


class KeyUnavailable(Exception):
    """The namespace has a key of its own, but it cannot be had now (the message says why
    and what to do; it names the Secret, never its contents)."""


@dataclass
class _Entry:
    key: str | None
    problem: str | None
    expires: float


def _failed(problem: str) -> _Entry:
    """No key, and why; asked for again after RETRY_SECONDS."""
    return _Entry(None, problem, time.monotonic() + RETRY_SECONDS)


class ModelKeys:
    def __init__(
        self,
        default_key: str,
        namespace_secrets: Mapping[str, str],
        kube: KubeClient,
        refresh_seconds: float,
    ) -> None:
        self.default_key = default_key
        self.namespace_secrets = dict(namespace_secrets)
        self.kube = kube
        self.refresh_seconds = refresh_seconds
        self._entries: dict[str, _Entry] = {}
        # One read at a time per namespace, however many calls wait; a slow read of one
        # namespace's Secret holds up no other namespace.
        self._locks = {namespace: asyncio.Lock() for namespace in self.namespace_secrets}

    async def key_for(self, namespace: str) -> str:
        secret = self.namespace_secrets.get(namespace)
        if secret is None:
            return self.default_key
        entry = self._entries.get(namespace)
        if entry is None or entry.expires <= time.monotonic():
            async with self._locks[namespace]:
                entry = self._entries.get(namespace)
                if entry is None or entry.expires <= time.monotonic():
                    entry = await self._read(namespace, secret, entry)
                    self._entries[namespace] = entry
        if entry.key is None:
            raise KeyUnavailable(entry.problem or "no key")
        return entry.key

    async def _read(self, namespace: str, secret: str, previous: _Entry | None) -> _Entry:
        where = f"Secret {namespace}/{secret} (modelProxy.namespaceKeys)"
        try:
            body = await self.kube.get("Secret", namespace, secret)
        except ApiError as error:
            if error.status == 404:
                problem = f"{where} does not exist: create it with {runtime.ENV_API_KEY}"
            elif error.status == 403:
                problem = (
                    f"the gateway may not read {where}: list it in the chart's "
                    "gateway.modelProxy.namespaceKeys, which grants that read"
                )
            else:
                return self._unreadable(where, str(error.status), previous)
            return _failed(problem)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return self._unreadable(where, type(error).__name__, previous)
        encoded = (body.get("data") or {}).get(runtime.ENV_API_KEY, "")
        try:
            key = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            key = ""
        if not key:
            return _failed(f"{where} has no {runtime.ENV_API_KEY}")
        return _Entry(key, None, time.monotonic() + self.refresh_seconds)

    def _unreadable(self, where: str, why: str, previous: _Entry | None) -> _Entry:
        """The API server did not answer: a key read before is used on rather than failing
        calls (a removed Secret is seen once the API server answers again)."""
        if previous is not None and previous.key is not None:
            return _Entry(previous.key, None, time.monotonic() + RETRY_SECONDS)
        return _failed(f"{where} could not be read ({why})")
