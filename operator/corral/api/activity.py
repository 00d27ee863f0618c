"""What a runner tells the operator about its session (runner -> operator, over HTTP).

Runners push these (pods hold no Kubernetes credentials, and polling thousands of pods
would cost the operator more than the reports do): when a turn starts, when it ends, and
as a heartbeat while busy. The operator keeps the latest in memory and writes status only
when something material moved.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from corral.api.v1alpha1 import AgentStatus

ACTIVITY_PATH = "/v1/activity"


class ActivityReport(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    namespace: str = Field(..., max_length=63)
    name: str = Field(..., max_length=253)
    pod_name: str = Field(..., max_length=253)
    busy: bool
    last_activity_time: datetime
    session_id: str | None = Field(None, max_length=128)
    num_turns: int | None = Field(None, ge=0)
    total_cost_usd: float | None = Field(None, ge=0)
    sdk_version: str | None = Field(None, max_length=64)
    cli_version: str | None = Field(None, max_length=64)
    agents: list[AgentStatus] = Field(default_factory=list, max_length=16)
