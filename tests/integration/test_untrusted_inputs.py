"""What a session's author or its pod may not make the operator do (issue 11, items 2 and 4),
against the real API server and a real operator process.

- Activity reports: a pod cannot speak for another session or pod, and values that would
  wedge the status (out of int64, not finite, duplicate agents, a year-9000 clock) are
  refused or ignored; none reaches the status.
- Credentials: a Secret without the `corral.dev/credentials=true` label, or a baseUrl off
  the operator's allowlist, never reaches a pod; the session says why (condition + Event).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from lifecycle_support import Sessions, condition, condition_is, session_pods, wait_event

from corral.testing.kube import wait_for
from corral.testing.operator import OperatorProcess, report_activity

pytestmark = pytest.mark.integration

LABEL = "corral.dev/credentials"


@pytest.fixture
def sessions(
    operator: OperatorProcess, custom: client.CustomObjectsApi, namespace: str
) -> Iterator[Sessions]:
    yield Sessions(custom, namespace)


def running_pod(sessions: Sessions, core: client.CoreV1Api, name: str) -> tuple[str, str]:
    """Wait until `name` runs; (its pod's name, the session's uid)."""

    def settled() -> tuple[str, str] | None:
        body = sessions.get(name)
        status = body.get("status") or {}
        pods = session_pods(core, sessions.namespace, name)
        if status.get("phase") != "Running" or len(pods) != 1:
            return None
        return str(pods[0].metadata.name), str(body["metadata"]["uid"])

    found: tuple[str, str] = wait_for(settled, timeout=60, what=f"{name} Running")
    return found


def post_raw(operator: OperatorProcess, body: str, token: str) -> int:
    request = urllib.request.Request(
        f"{operator.url}/v1/activity",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_forged_activity_reports_are_refused_and_change_no_status(
    sessions: Sessions, core: client.CoreV1Api, operator: OperatorProcess
) -> None:
    namespace = sessions.namespace
    for name in ("alpha", "beta"):
        sessions.create(name, {"pattern": "LongRunning"})
    alpha_pod, alpha_uid = running_pod(sessions, core, "alpha")
    beta_pod, beta_uid = running_pod(sessions, core, "beta")
    alpha_token = operator.activity_token(namespace, "alpha", alpha_uid, alpha_pod)
    beta_token = operator.activity_token(namespace, "beta", beta_uid, beta_pod)

    def beta_reports(token: str | None, **fields: Any) -> int:
        return report_activity(operator.url, namespace, "beta", beta_pod, False, token, **fields)

    honest = {"numTurns": 2, "totalCostUsd": 0.5}
    wait_for(lambda: beta_reports(beta_token, **honest) == 202, timeout=30, what="a report")
    sessions.wait_status("beta", lambda s: s.get("numTurns") == 2, "numTurns from the report")
    forbidden = operator.metric("corral_activity_reports_rejected_total", 'reason="forbidden"')

    # Another session's pod, no token, a made-up token: 401/403.
    assert beta_reports(alpha_token, numTurns=99) == 403
    assert beta_reports(None, numTurns=99) == 401
    assert beta_reports("f" * 64, numTurns=99) == 403
    # beta's own token with alpha's pod name is not alpha's pod either.
    alpha_as_beta = report_activity(
        operator.url, namespace, "alpha", alpha_pod, True, beta_token, numTurns=99
    )
    assert alpha_as_beta == 403
    # beta's own token, values that would fail every later status patch: 400.
    assert beta_reports(beta_token, numTurns=2**63) == 400
    assert beta_reports(beta_token, totalCostUsd=1e308) == 400
    assert beta_reports(beta_token, agents=[{"name": "main"}, {"name": "main"}]) == 400
    infinity = json.dumps(
        {"namespace": namespace, "name": "beta", "podName": beta_pod, "busy": False}
    ).replace("}", ', "totalCostUsd": Infinity}')
    assert post_raw(operator, infinity, beta_token) == 400
    # A time in the report is not the operator's: accepted, but status keeps the operator's.
    before = datetime.now(UTC) - timedelta(seconds=5)
    assert beta_reports(beta_token, numTurns=3, lastActivityTime="9000-01-01T00:00:00Z") == 202
    status = sessions.wait_status("beta", lambda s: s.get("numTurns") == 3, "numTurns 3")

    assert operator.metric("corral_activity_reports_rejected_total", 'reason="forbidden"') >= (
        forbidden + 3
    )
    assert status["totalCostUsd"] == 0.5  # nothing forged reached it
    last = datetime.fromisoformat(status["lastActivityTime"].replace("Z", "+00:00"))
    assert before - timedelta(minutes=2) <= last <= datetime.now(UTC) + timedelta(seconds=5)
    assert sessions.status("alpha").get("numTurns") is None  # alpha was never spoken for
    # The status is still writable: the session takes further reports.
    assert beta_reports(beta_token, numTurns=4) == 202
    sessions.wait_status("beta", lambda s: s.get("numTurns") == 4, "numTurns 4")


def make_secret(core: client.CoreV1Api, namespace: str, name: str, labelled: bool) -> None:
    labels = {LABEL: "true"} if labelled else {}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            string_data={"ANTHROPIC_API_KEY": "sk-ant-not-real"},
        ),
    )


def test_an_unlabelled_secret_never_reaches_a_pod(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    make_secret(core, namespace, "db-password", labelled=False)
    sessions.create(
        "thief", {"pattern": "LongRunning", "credentials": {"secretName": "db-password"}}
    )
    status = sessions.wait_status(
        "thief",
        lambda s: condition_is(s, "CredentialsReady", "False", "SecretNotLabelled"),
        "CredentialsReady False SecretNotLabelled",
    )
    assert status["phase"] == "Pending"
    assert condition_is(status, "Ready", "False", "SecretNotLabelled")
    message = (condition(status, "CredentialsReady") or {})["message"]
    assert f"{LABEL}=true" in message and "kubectl label secret db-password" in message
    event = wait_event(core, namespace, "thief", "SecretNotLabelled")
    assert event.type == "Warning" and "db-password" in event.message
    assert "sk-ant" not in json.dumps(status) and "sk-ant" not in event.message
    assert session_pods(core, namespace, "thief") == []

    # Whoever may label Secrets opts it in; the session then starts by itself.
    core.patch_namespaced_secret(
        "db-password", namespace, {"metadata": {"labels": {LABEL: "true"}}}
    )
    running_pod(sessions, core, "thief")
    [pod] = session_pods(core, namespace, "thief")
    [key] = [e for e in pod.spec.containers[0].env if e.name == "ANTHROPIC_API_KEY"]
    assert key.value_from.secret_key_ref.name == "db-password"
    assert condition_is(sessions.status("thief"), "CredentialsReady", "True", "SecretFound")


def test_a_base_url_off_the_allowlist_never_reaches_a_pod(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    namespace = sessions.namespace
    make_secret(core, namespace, "anthropic", labelled=True)
    credentials = {"secretName": "anthropic", "baseUrl": "https://collector.evil.example"}
    sessions.create("leaky", {"pattern": "LongRunning", "credentials": credentials})
    status = sessions.wait_status(
        "leaky",
        lambda s: condition_is(s, "CredentialsReady", "False", "BaseUrlNotAllowed"),
        "CredentialsReady False BaseUrlNotAllowed",
    )
    message = (condition(status, "CredentialsReady") or {})["message"]
    assert "spec.credentials.baseUrl" in message and "allowedBaseUrls" in message
    assert wait_event(core, namespace, "leaky", "BaseUrlNotAllowed").type == "Warning"
    assert session_pods(core, namespace, "leaky") == []
