"""Per-session credentials derived from one key that only Corral's servers hold.

A credential is an HMAC of its purpose and the session's namespace, name and UID, so it
is worthless for any other session (or a same-named successor) and needs no storage: the
operator hands it to the session's pod, the gateway derives it again to prove itself to
the runner. An agent that reads its own pod's credential can call nothing but itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from corral.api import runtime

# What a credential is for: each purpose gives a different token for the same session.
RUNNER_INGRESS = "runner-ingress"
# Header carrying the gateway's credential on requests to a runner.
GATEWAY_HEADER = runtime.GATEWAY_CREDENTIAL_HEADER
MIN_KEY_BYTES = 32


class BadKey(ValueError):
    pass


def load_key(path: str | Path) -> bytes:
    key = Path(path).read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise BadKey(f"the key in {path} has {len(key)} bytes; at least {MIN_KEY_BYTES} needed")
    return key


def session_credential(key: bytes, purpose: str, namespace: str, name: str, uid: str) -> str:
    message = "\n".join((purpose, namespace, name, uid)).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())
