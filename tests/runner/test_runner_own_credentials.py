"""The runner's own credentials (its activity token, the gateway's credential) are used by
the runner and reach none of the processes it starts: the agent's CLI and its children."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from runner_harness import start_runner

from corral.api import runtime
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk

ACTIVITY_TOKEN = "activity-token-of-this-pod"
GATEWAY_CREDENTIAL = "gateway-credential-of-this-session"


def _status_from_outside_the_pod(url: str, credential: str | None) -> int:
    """GET /v1/status from 127.0.0.2: loopback, but not the pod's own 127.0.0.1."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=("127.0.0.2", 0)
    )
    headers = {runtime.GATEWAY_CREDENTIAL_HEADER: credential} if credential else {}
    try:
        conn.request("GET", "/v1/status", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_cli_inherits_neither_credential_and_the_runner_still_uses_them(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    runner = start_runner(
        {"pattern": "LongRunning"},
        tmp_path,
        fake.url,
        env={
            runtime.ENV_ACTIVITY_TOKEN: ACTIVITY_TOKEN,
            runtime.ENV_GATEWAY_CREDENTIAL: GATEWAY_CREDENTIAL,
        },
    )
    try:
        clis = runner.cli_pids()
        assert clis, runner.logs_text()
        for pid in clis:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"ANTHROPIC_BASE_URL=" in environ  # what the CLI needs did arrive
            for secret in (ACTIVITY_TOKEN, GATEWAY_CREDENTIAL):
                assert secret.encode() not in environ, pid
            for name in (runtime.ENV_ACTIVITY_TOKEN, runtime.ENV_GATEWAY_CREDENTIAL):
                assert f"{name}=".encode() not in environ, pid
        # The runner took the gateway's credential with it, and checks it.
        assert _status_from_outside_the_pod(runner.url, None) == 401
        assert _status_from_outside_the_pod(runner.url, "a-guess") == 401
        assert _status_from_outside_the_pod(runner.url, GATEWAY_CREDENTIAL) == 200
    finally:
        assert runner.terminate() == 0, runner.logs_text()
    assert ACTIVITY_TOKEN not in runner.logs_text()
    assert GATEWAY_CREDENTIAL not in runner.logs_text()
