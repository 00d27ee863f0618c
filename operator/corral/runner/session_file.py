"""Read the session the runner serves: an AgentSession manifest or a bare spec (YAML or JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corral.api.v1alpha1 import AgentSession, AgentSessionSpec


@dataclass(frozen=True)
class SessionFile:
    spec: AgentSessionSpec
    # Known only from a full manifest; the pod learns them from its environment instead.
    name: str | None = None
    namespace: str | None = None


class SessionFileError(ValueError):
    """The file is missing, unparsable, or not a valid AgentSession spec."""


def parse_session(body: Any) -> SessionFile:
    if not isinstance(body, dict):
        raise SessionFileError("session file must hold a mapping (a manifest or a spec)")
    try:
        if "spec" in body and ("kind" in body or "apiVersion" in body):
            session = AgentSession.from_manifest(body)
            return SessionFile(session.spec, session.metadata.name, session.metadata.namespace)
        return SessionFile(AgentSessionSpec.model_validate(body))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise SessionFileError(f"invalid AgentSession spec: {exc}") from exc


def load_session(path: Path) -> SessionFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SessionFileError(f"cannot read session file {path}: {exc}") from exc
    try:
        body = yaml.safe_load(text)  # JSON is YAML, so one parser reads both
    except yaml.YAMLError as exc:
        raise SessionFileError(f"session file {path} is neither YAML nor JSON: {exc}") from exc
    return parse_session(body)
