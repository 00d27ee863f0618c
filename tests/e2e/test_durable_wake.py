"""A Hybrid session is woken for the durable task its agent scheduled, on the real node.

The agent schedules a task for a coming minute (`CronCreate` with `durable: true`: its CLI
keeps it in the workspace, on the session's volume). The runner reports when it is due,
the session sleeps after its idleTimeout, and the operator (installed by the chart, whose
`config.durableWakeLeadSeconds` is 30 here) wakes it that long before the minute: the new
pod's CLI, started before the minute, runs the task then (one started after it would drop
it and ask the user whether to run it, docs/runner.md). About two minutes, most of it
waiting for the minute.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from e2e_support import (
    DURABLE_WAKE_LEAD_SECONDS,
    GatewayClient,
    Release,
    Sessions,
    ready_pod,
    session_pods,
    spec,
)
from kubernetes import client

from corral.controller.lifecycle import parse_time, timestamp
from corral.testing.anthropic_script import ToolUseStep, text
from corral.testing.durable_tasks import minute_run_on_time
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

NAME = "alarm"
IDLE = timedelta(seconds=10)
PROMPT = "the durable task's prompt"


def test_a_sleeping_session_is_woken_for_its_agents_durable_task(
    operator: Release,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
    gateway: GatewayClient,
) -> None:
    sessions = Sessions(custom, namespace)
    tools = ["Bash", "CronCreate", "ToolSearch"]
    idle = f"{IDLE.seconds}s"
    sessions.create(
        NAME, spec("Hybrid", idleTimeout=idle, storage={"size": "1Gi"}, allowedTools=tools)
    )
    first = ready_pod(core, namespace, NAME, timeout=420).metadata.name
    lead = timedelta(seconds=DURABLE_WAKE_LEAD_SECONDS)
    # The first whole minute far enough ahead for the session to sleep first (one that
    # would sleep within twice the lead of the task stays up instead), with 30 s to spare
    # for the turn. The runner image runs in UTC, as the CLI reads the cron.
    earliest = datetime.now(UTC) + IDLE + 2 * lead + timedelta(seconds=30)
    minute = minute_run_on_time(earliest.replace(second=0, microsecond=0) + timedelta(minutes=1))
    task = {
        "cron": f"{minute.minute} {minute.hour} * * *",
        "prompt": PROMPT,
        "recurring": False,
        "durable": True,
    }
    fake.add(
        ToolUseStep(name="CronCreate", input=task, match="remind me"),
        text("I will", match="remind me"),
        text("done, as scheduled", match=PROMPT),
    )
    reply = gateway.send(namespace, NAME, "remind me at that minute")
    assert reply.status == 200 and reply.events[-1]["subtype"] == "success", reply
    due = timestamp(minute)
    wait_for(
        lambda: sessions.status(NAME).get("nextDurableWakeupTime") == due,
        timeout=60,
        what="status.nextDurableWakeupTime from the runner's report",
    )

    asleep = sessions.wait_phase(NAME, "Idle", timeout=120)
    assert asleep["nextDurableWakeupTime"] == due
    wait_for(lambda: session_pods(core, namespace, NAME) == [], timeout=90)
    scaled_down = [
        e.message or ""
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "ScaledDown" and e.involved_object.name == NAME
    ]
    assert any(f"it wakes at {timestamp(minute - lead)}" in m for m in scaled_down), scaled_down

    # Woken by the operator alone, ahead of the minute; the CLI runs the task at it.
    second = ready_pod(core, namespace, NAME, timeout=float(2 * 60 + 4 * lead.seconds))
    assert second.metadata.name != first
    assert second.metadata.creation_timestamp >= minute - lead - timedelta(seconds=1)
    status = sessions.status(NAME)
    assert status["wakeCount"] == 1 and "observedWake" not in status, status
    woken = [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "WokenForSchedule" and e.involved_object.name == NAME
    ]
    assert woken, "no WokenForSchedule Event"

    def ran() -> bool:
        return any(
            PROMPT in json.dumps(body.get("messages", [])[-1:]) for body in fake.message_bodies()
        )

    wait_for(ran, timeout=120, what="the durable task's turn at its minute")
    assert datetime.now(UTC) >= minute
    prompts = [json.dumps(body.get("messages", [])[-1:]) for body in fake.message_bodies()]
    assert not any("was missed" in p for p in prompts), prompts
    # The task is done: the runner read the file again after that turn.
    wait_for(
        lambda: "nextDurableWakeupTime" not in sessions.status(NAME),
        timeout=60,
        what="status.nextDurableWakeupTime cleared after the task ran",
    )
    last = parse_time(sessions.status(NAME).get("lastActivityTime"))
    assert last is not None and last >= minute
