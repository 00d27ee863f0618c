"""How the bundled CLI takes the model proxy's refusals (the gateway's exact answers, played
by the fake model): a spent budget ends the turn at once with the message that says why."""

from __future__ import annotations

import json

import pytest
from runner_harness import Runner, result_of

from corral.gateway import budgets
from corral.testing.anthropic_script import error, text
from corral.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.sdk


def test_a_spent_budget_ends_the_turn_with_the_gateways_message_and_no_retry(
    long_running: Runner, fresh_fake: FakeAnthropic
) -> None:
    refused = budgets.session_budget(0.5, 0.61)
    assert refused is not None
    fresh_fake.add(
        error(refused.status, error_type=refused.error_type, message=refused.message, times=5)
    )
    events = long_running.send("spend more")
    result = result_of(events)
    assert result["is_error"] is True and result.get("api_error_status") == 402, result
    assert "spec.maxBudgetUsd is 0.50 USD" in json.dumps(result), result
    assert len(fresh_fake.message_bodies()) == 1  # not retried
    assert long_running.status()["state"] == "idle"
    fresh_fake.reset()
    fresh_fake.add(text("back in budget"))
    assert result_of(long_running.send("and now?"))["subtype"] == "success"
