"""JSON log lines for the operator: one object per line, naming the session it is about."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


def base_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields every Corral log line starts with (operator and runner alike)."""
    return {
        "time": datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }


class OperatorJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = base_fields(record)
        namespace = getattr(record, "session_namespace", None)
        name = getattr(record, "session_name", None)
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers
        if name is None and isinstance(ref, dict):
            namespace, name = ref.get("namespace"), ref.get("name")
        if name is not None:
            line["session"] = name
            line["namespace"] = namespace
        fields = getattr(record, "fields", None)  # extra={"fields": {...}}: more keys
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OperatorJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
