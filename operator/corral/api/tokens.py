"""Per-session tokens derived from the key only Corral's servers hold (the operator and
the gateway read the same key file; see OperatorConfig.activity_key_file).

A token is an HMAC of a purpose and the session's identity, so it is worthless for any
other session, a same-named successor or another purpose, and needs no storage: the
operator puts it in the session's pod, the receiving side derives it again.
"""

from __future__ import annotations

import hashlib
import hmac

# The gateway presents this to a session's runner (header runtime.GATEWAY_CREDENTIAL_HEADER).
RUNNER_INGRESS = b"corral.dev/runner-ingress/v1"


def hmac_token(key: bytes, purpose: bytes, *parts: str) -> str:
    """Hex HMAC-SHA256 of the purpose and the parts, NUL-separated."""
    message = b"\0".join([purpose, *(part.encode() for part in parts)])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def runner_credential(key: bytes, namespace: str, name: str, uid: str) -> str:
    """What the gateway shows a session's runner, and what the runner expects."""
    return hmac_token(key, RUNNER_INGRESS, namespace, name, uid)


# What a session's pod uses as its Anthropic API key at the gateway's model proxy.
MODEL_PROXY = b"corral.dev/model-proxy/v1"
# Recognisable in logs and leak scanners, and never mistaken for a real Anthropic key.
MODEL_CREDENTIAL_PREFIX = "corral-session-"


def model_credential(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The per-session key a pod sends to the model proxy (worthless anywhere else)."""
    return MODEL_CREDENTIAL_PREFIX + hmac_token(key, MODEL_PROXY, namespace, name, uid)
