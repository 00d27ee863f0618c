"""Read the session the runner serves: an AgentSession manifest or a bare spec (YAML or JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        # The pod's file is JSON: the YAML parser (slower to import and to run) only
        # for a file that is not.
        body = json.loads(text)
    except ValueError:
        body = _yaml(path, text)
    return parse_session(body)


def _yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SessionFileError(f"session file {path} is neither YAML nor JSON: {exc}") from exc
