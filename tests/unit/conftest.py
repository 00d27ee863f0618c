"""Builders shared by the unit tests: sessions as the API server would hand them over."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig

MINIMAL_SPECS: dict[str, dict[str, Any]] = {
    "Ephemeral": {"pattern": "Ephemeral", "prompt": "Say hello."},
    "LongRunning": {"pattern": "LongRunning"},
    "Hybrid": {"pattern": "Hybrid"},
    "Shared": {"pattern": "Shared", "agents": [{"name": "author"}, {"name": "reviewer"}]},
}


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig()


@pytest.fixture
def make_session() -> Callable[..., AgentSession]:
    def make(
        pattern: str = "LongRunning",
        name: str = "demo",
        namespace: str = "team-a",
        uid: str | None = "0b7d3c1e-5f7a-4c1e-9a55-2b1f0f6d8e01",
        **spec: Any,
    ) -> AgentSession:
        body = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {**MINIMAL_SPECS[pattern], **spec},
        }
        return AgentSession.model_validate(body)

    return make
