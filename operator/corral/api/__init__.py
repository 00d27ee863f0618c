"""The AgentSession API: pydantic models that are the single source of truth."""

from corral.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AgentSession,
    AgentSessionSpec,
    AgentSessionStatus,
    Pattern,
    Phase,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AgentSession",
    "AgentSessionSpec",
    "AgentSessionStatus",
    "Pattern",
    "Phase",
]
