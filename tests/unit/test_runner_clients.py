"""Connected clients as activity: spec.clientIdleTimeout bounds how long a silent one counts."""

from __future__ import annotations

import types
from typing import Any

import pytest

from corral.runner import session as session_module
from corral.runner.session import RunnerSession


class IdleWorker:
    name = "main"
    in_use = False


def test_a_silent_client_counts_for_client_idle_timeout_after_its_last_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(session_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    limit: list[float | None] = [None]
    workers: list[Any] = [IdleWorker()]
    session = RunnerSession("Hybrid", workers, fake_api=False, client_idle_seconds=lambda: limit[0])
    assert not session.in_use()
    with session.client_socket() as client:
        now[0] += 3600
        assert session.in_use()  # unset: for as long as it stays connected
        limit[0] = 60.0  # read live: a spec change applies to clients already connected
        assert not session.in_use() and session.clients_in_use() == 0
        client.heard()
        now[0] += 59
        assert session.in_use()
        now[0] += 1
        assert not session.in_use()
        with session.client_socket():  # another client, just connected
            assert session.clients_in_use() == 1
    assert not session.in_use()
