"""What a failed e2e test leaves behind: its namespace's sessions, pods, Events and logs, the
operator's log lines about that namespace and the fake model's requests, taken at the
moment the test failed (before its namespace is deleted) and attached to the test's report.

An e2e failure that does not reproduce on a rerun is otherwise lost with the cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from e2e_support import Release, kubectl

from corral.testing.fake_anthropic import FakeAnthropic

# Bounds, so that a story stays readable in a CI log.
POD_LOG_LINES = 150
OPERATOR_LOG_SCAN = 5000
OPERATOR_LOG_LINES = 200
EVENTS_CHARS = 6000


def pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    """The parts of a pod that say why it is where it is."""
    status = pod.get("status") or {}
    return {
        "name": pod["metadata"]["name"],
        "deleting": bool(pod["metadata"].get("deletionTimestamp")),
        "phase": status.get("phase"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "conditions": [
            (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions", [])
        ],
        "containers": [
            {
                "name": c.get("name"),
                "ready": c.get("ready"),
                "restarts": c.get("restartCount"),
                "state": c.get("state"),
                "lastState": c.get("lastState"),
            }
            for c in status.get("containerStatuses", [])
        ],
    }


def lines_naming(text: str, needle: str, keep: int) -> str:
    found = [line for line in text.splitlines() if needle in line]
    return "\n".join(found[-keep:])


def fake_requests(fake: FakeAnthropic) -> Iterable[str]:
    for request in fake.requests:
        body = request.body if isinstance(request.body, dict) else {}
        messages = body.get("messages") or []
        yield (
            f"{request.received_at:.3f} {request.method} {request.path} "
            f"model={body.get('model')} messages={len(messages)} stream={body.get('stream')}"
        )


def story(release: Release, namespace: str | None, fake: FakeAnthropic | None) -> str:
    """Everything above as one text; each part is best effort (a broken cluster is a
    likely reason for the failure)."""
    parts: list[str] = []

    def section(title: str, body: str) -> None:
        parts.append(f"----- {title}\n{body.rstrip()}")

    def run(*args: str) -> str:
        try:
            done = kubectl(release.kubeconfig, *args, timeout=30)
        except Exception as error:  # the story must not hide the failure it explains
            return f"({type(error).__name__}: {error})"
        return done.stdout + done.stderr

    if namespace:
        sessions = run("-n", namespace, "get", "agentsessions", "-o", "json")
        try:
            for item in json.loads(sessions).get("items", []):
                section(
                    f"session {item['metadata']['name']}",
                    json.dumps(item.get("status") or {}, indent=1),
                )
        except ValueError:
            section("sessions", sessions)
        pods_text = run("-n", namespace, "get", "pods", "-o", "json")
        try:
            pods = json.loads(pods_text).get("items", [])
        except ValueError:
            pods = []
            section("pods", pods_text)
        for pod in pods:
            summary = pod_summary(pod)
            section(f"pod {summary['name']}", json.dumps(summary, indent=1))
            name = summary["name"]
            tail = f"--tail={POD_LOG_LINES}"
            section(f"logs of {name}", run("-n", namespace, "logs", name, "--all-containers", tail))
            if any(c["restarts"] for c in summary["containers"]):
                section(
                    f"previous logs of {name}",
                    run("-n", namespace, "logs", name, "--all-containers", "--previous", tail),
                )
        events = run("-n", namespace, "get", "events", "--sort-by=.lastTimestamp")
        section("events", events[-EVENTS_CHARS:])
    if namespace:
        for component in ("operator", "gateway"):
            logs = release.component_logs(component, tail=OPERATOR_LOG_SCAN)
            section(
                f"{component} log lines naming {namespace}",
                lines_naming(logs, namespace, OPERATOR_LOG_LINES),
            )
    else:
        section("operator log", release.operator_logs(tail=OPERATOR_LOG_LINES))
    if fake is not None:
        section("requests the fake model received", "\n".join(fake_requests(fake)))
    return "\n".join(parts)
