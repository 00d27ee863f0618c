"""Structured logs: one JSON object per line on stdout, tagged with the session.

Every line carries the session name and namespace from the pod environment, so logs
from many pods can be told apart after collection. The API key's value is scrubbed
from every line, whatever logged it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from corral.api import runtime
from corral.logs import base_fields

_FIELDS = "corral_fields"
REDACTED = "[redacted]"


def log_event(
    logger: logging.Logger, msg: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log `msg` with structured fields (values must be JSON-able or are str()-ed)."""
    logger.log(level, msg, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    def __init__(self, session: str | None, namespace: str | None) -> None:
        super().__init__()
        self._session = session
        self._namespace = namespace

    def format(self, record: logging.LogRecord) -> str:
        line = base_fields(record)
        line.update(session=self._session, namespace=self._namespace)
        line.update(getattr(record, _FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _scrub(json.dumps(line, default=str))


# Shorter keys are not scrubbed (they would redact common words); a cut-off key prefix
# of this many characters or more is.
MIN_SECRET_CHARS = 8


def _scrub(text: str) -> str:
    # Read at format time: the key may be set after logging was configured (fake API).
    key = os.environ.get(runtime.ENV_API_KEY, "")
    if len(key) >= MIN_SECRET_CHARS and key in text:
        text = text.replace(key, REDACTED)
    return text


def scrub_and_cut(text: str, limit: int) -> str:
    """`text` without the API key, then cut to `limit` characters. Scrubbing first means a
    cut cannot split the key into a prefix the scrubber no longer recognises; a key prefix
    left at the end anyway (the writer cut it itself) is redacted too."""
    text = _scrub(text)[:limit]
    key = os.environ.get(runtime.ENV_API_KEY, "")
    if len(key) < MIN_SECRET_CHARS:
        return text
    for size in range(min(len(key), len(text)), MIN_SECRET_CHARS - 1, -1):
        if text.endswith(key[:size]):
            return text[:-size] + REDACTED
    return text


def configure(session: str | None, namespace: str | None, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            # The pod's environment wins; a manifest's metadata is the fallback.
            os.environ.get(runtime.ENV_SESSION_NAME) or session,
            os.environ.get(runtime.ENV_SESSION_NAMESPACE) or namespace,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDK logs at INFO about its internals; its warnings still come through.
    logging.getLogger("claude_agent_sdk").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
