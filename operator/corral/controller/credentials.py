"""Which API key a session's pod may get, decided without I/O.

The operator must not be a confused deputy: whoever may create an AgentSession must not
be able to point the operator at any Secret of the namespace and any URL. So a Secret is
used only when it carries CREDENTIALS_LABEL (whoever may label Secrets opted it in as an
API key), and spec.credentials.baseUrl only when the operator's `allowedBaseUrls` lists
it. A session with no key at all does not start either: it could not talk to a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession, CredentialsSpec
from corral.config import OperatorConfig

CREDENTIALS_LABEL = "corral.dev/credentials"
# What the runner environment may carry to count as a key the operator provides itself.
KEY_VARIABLES = (runtime.ENV_API_KEY, "ANTHROPIC_AUTH_TOKEN")


class SecretCheck(StrEnum):
    """What a metadata-only GET of the credentials Secret found."""

    FOUND = "Found"
    NOT_FOUND = "NotFound"
    UNLABELLED = "Unlabelled"


def secret_check(metadata: dict[str, Any] | None) -> SecretCheck:
    """The verdict on a Secret's metadata (None: the Secret does not exist)."""
    if metadata is None:
        return SecretCheck.NOT_FOUND
    labels = (metadata.get("metadata") or {}).get("labels") or {}
    return SecretCheck.FOUND if labels.get(CREDENTIALS_LABEL) == "true" else SecretCheck.UNLABELLED


@dataclass(frozen=True)
class Refusal:
    """Why a session may not start; becomes a CredentialsReady=False condition and Event."""

    reason: str
    message: str


def credentials_of(session: AgentSession, config: OperatorConfig) -> CredentialsSpec | None:
    """The Secret the pod's key comes from; None with the model proxy (the gateway holds
    the key, and no Secret of the session's namespace is used)."""
    if config.model_proxy is not None:
        return None
    return session.spec.credentials or config.default_credentials


def operator_key_source(config: OperatorConfig) -> str | None:
    """How the operator's own configuration gives every runner a key, if it does."""
    if config.model_proxy is not None:
        return "the gateway's model proxy holds the key; the pod gets a per-session credential"
    for name in KEY_VARIABLES:
        if config.runner_env.get(name):
            return f"the operator's runnerEnv sets {name}"
    return None


def refusal(session: AgentSession, config: OperatorConfig) -> Refusal | None:
    """A reason not to start the session that needs no API call; None when none."""
    base_url = session.spec.credentials.base_url if session.spec.credentials else None
    if config.model_proxy is not None:
        return None  # the gateway decides where model calls go, with its own key
    if base_url is not None and not config.base_url_allowed(base_url):
        allowed = ", ".join(config.allowed_base_urls) or "none"
        return Refusal(
            "BaseUrlNotAllowed",
            f"spec.credentials.baseUrl {base_url[:200]!r} is not allowed by the operator "
            "(the API key is sent there): remove the field, or ask the operator's admin to "
            f"add it to allowedBaseUrls (Helm: config.allowedBaseUrls; allowed now: {allowed})",
        )
    if credentials_of(session, config) is None and operator_key_source(config) is None:
        return Refusal(
            "NoCredentials",
            "no Anthropic API key: set spec.credentials.secretName to a Secret labelled "
            f"{CREDENTIALS_LABEL}=true (or give the operator defaultCredentials); the "
            "session would start but could not talk to a model",
        )
    return None


def secret_refusal(check: SecretCheck, namespace: str, credentials: CredentialsSpec) -> Refusal:
    """Why the Secret found by `check` (not FOUND) cannot be used."""
    secret = credentials.secret_name
    if check == SecretCheck.NOT_FOUND:
        return Refusal(
            "SecretNotFound",
            f"Secret {secret!r} (spec.credentials.secretName) was not found in namespace "
            f"{namespace!r}: create it with the API key under key {credentials.key!r} and the "
            f"label {CREDENTIALS_LABEL}=true",
        )
    return Refusal(
        "SecretNotLabelled",
        f"Secret {secret!r} (spec.credentials.secretName) lacks the label "
        f"{CREDENTIALS_LABEL}=true, which marks a Secret as an API key the operator may give "
        f"to sessions: `kubectl label secret {secret} -n {namespace} {CREDENTIALS_LABEL}=true` "
        "if it holds an Anthropic API key",
    )
