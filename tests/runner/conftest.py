"""Fixtures for the runner tests: the fake Anthropic API and shared runner subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from runner_harness import Runner, start_runner

from corral.testing.fake_anthropic import FakeAnthropic


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sdk: starts the real Claude CLI (seconds per test); runs by default"
    )


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    api = FakeAnthropic()
    api.start_in_thread()
    yield api
    api.stop_thread()


@pytest.fixture(scope="module")
def module_fake() -> Iterator[FakeAnthropic]:
    api = FakeAnthropic()
    api.start_in_thread()
    yield api
    api.stop_thread()


@pytest.fixture(scope="module")
def long_running(
    module_fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runner]:
    """One LongRunning runner shared by the tests of a module (the CLI is slow to start)."""
    spec = {"pattern": "LongRunning", "allowedTools": ["Bash", "Write", "Read"], "maxTurns": 8}
    runner = start_runner(
        spec,
        tmp_path_factory.mktemp("long-running"),
        module_fake.url,
        # One retry keeps failure tests short; transient faults still recover.
        env={"CLAUDE_CODE_MAX_RETRIES": "1"},
    )
    yield runner
    code = runner.terminate()
    assert code == 0, runner.logs_text()


@pytest.fixture
def fresh_fake(module_fake: FakeAnthropic) -> FakeAnthropic:
    module_fake.reset()
    return module_fake
