"""What the lifecycle refuses to trust: Secrets not opted in, API hosts not allowed, sessions
with no key, long wake values, times in the future. Pure `decide()` tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from test_lifecycle import (
    CONFIG,
    T0,
    World,
    conditions,
    created,
    hybrid_world,
    make_pod,
    make_session,
    observe,
    reasons,
    wake,
    with_status,
)

from corral.api import runtime
from corral.config import OperatorConfig, url_within
from corral.controller.credentials import CREDENTIALS_LABEL, SecretCheck, secret_check
from corral.controller.lifecycle import MAX_OBSERVED_WAKE, decide, timestamp, wake_token

NO_KEY = OperatorConfig()

# --- the credentials Secret must be opted in ------------------------------------------------


def test_secret_check_reads_the_label() -> None:
    labelled = {"metadata": {"name": "k", "labels": {CREDENTIALS_LABEL: "true"}}}
    assert secret_check(labelled) == SecretCheck.FOUND
    assert secret_check({"metadata": {"name": "k"}}) == SecretCheck.UNLABELLED
    other = {"metadata": {"labels": {CREDENTIALS_LABEL: "yes"}}}
    assert secret_check(other) == SecretCheck.UNLABELLED
    assert secret_check(None) == SecretCheck.NOT_FOUND


def test_an_unlabelled_secret_gets_no_pod_and_says_how_to_fix_it() -> None:
    session = make_session("LongRunning", credentials={"secretName": "db-password"})
    plan = decide(observe(session, secret_check=SecretCheck.UNLABELLED), CONFIG)
    assert created(plan, "Pod") == []
    assert plan.requeue_after is not None  # Secrets are not watched: look again
    after = with_status(session, plan)
    assert after.status.phase == "Pending"
    assert conditions(after)["CredentialsReady"] == ("False", "SecretNotLabelled")
    assert conditions(after)["Ready"] == ("False", "SecretNotLabelled")
    [condition] = [c for c in after.status.conditions if c.type == "CredentialsReady"]
    assert f"{CREDENTIALS_LABEL}=true" in condition.message
    assert "kubectl label secret db-password -n team-a" in condition.message
    assert reasons(plan) == ["SecretNotLabelled"]
    # Asked again: no second Event while nothing changed; once labelled, the pod starts.
    again = decide(observe(after, secret_check=SecretCheck.UNLABELLED), CONFIG)
    assert reasons(again) == []
    labelled = decide(observe(after, secret_check=SecretCheck.FOUND), CONFIG)
    assert len(created(labelled, "Pod")) == 1
    assert conditions(with_status(after, labelled))["CredentialsReady"] == ("True", "SecretFound")


def test_default_credentials_must_be_labelled_too() -> None:
    config = OperatorConfig(default_credentials={"secretName": "shared"})
    session = make_session("LongRunning")
    assert decide(observe(session), config).check_credentials == "shared"
    plan = decide(observe(session, secret_check=SecretCheck.UNLABELLED), config)
    assert created(plan, "Pod") == []


def test_checks_of_a_secret_that_stays_wrong_back_off() -> None:
    session = make_session("LongRunning", credentials={"secretName": "k"})
    first = decide(observe(session, secret_check=SecretCheck.NOT_FOUND), CONFIG)
    after = with_status(session, first)
    later = decide(
        observe(after, now=T0 + timedelta(minutes=10), secret_check=SecretCheck.NOT_FOUND), CONFIG
    )
    assert first.requeue_after is not None and later.requeue_after is not None
    assert first.requeue_after < later.requeue_after <= 60


# --- the API host must be allowed --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.anthropic.com", True),
        ("https://api.anthropic.com/", True),
        ("https://API.anthropic.com/v1", True),
        ("http://api.anthropic.com", False),
        ("https://api.anthropic.com:8443", False),
        ("https://api.anthropic.com.evil.example", False),
        ("https://api.anthropic.com@evil.example", False),
        ("https://user:pw@api.anthropic.com", False),
        ("https://evil.example/https://api.anthropic.com", False),
        ("https://api.anthropic.com:notaport", False),
    ],
)
def test_base_url_allowlist(url: str, allowed: bool) -> None:
    assert OperatorConfig().base_url_allowed(url) is allowed


def test_allowlist_paths_are_prefixes_on_segment_boundaries() -> None:
    assert url_within("https://gw.corp/anthropic/v1", "https://gw.corp/anthropic")
    assert not url_within("https://gw.corp/anthropic-evil", "https://gw.corp/anthropic")


def test_a_base_url_off_the_allowlist_gets_no_pod() -> None:
    credentials = {"secretName": "k", "baseUrl": "https://collector.evil.example"}
    session = make_session("LongRunning", credentials=credentials)
    plan = decide(observe(session), CONFIG)
    assert plan.check_credentials is None  # refused before any API call
    assert created(plan, "Pod") == []
    after = with_status(session, plan)
    assert conditions(after)["CredentialsReady"] == ("False", "BaseUrlNotAllowed")
    [condition] = [c for c in after.status.conditions if c.type == "CredentialsReady"]
    assert "spec.credentials.baseUrl" in condition.message
    assert "allowedBaseUrls" in condition.message
    assert reasons(plan) == ["BaseUrlNotAllowed"]
    # Allowed by the operator's configuration: the Secret is checked, then the pod starts.
    config = CONFIG.model_copy(update={"allowed_base_urls": ["https://collector.evil.example"]})
    assert decide(observe(session), config).check_credentials == "k"


def test_the_operators_own_default_base_url_is_trusted() -> None:
    config = CONFIG.model_copy(update={"default_anthropic_base_url": "http://gateway.corp:8080"})
    session = make_session(
        "LongRunning", credentials={"secretName": "k", "baseUrl": "http://gateway.corp:8080"}
    )
    assert decide(observe(session), config).check_credentials == "k"


# --- no key at all -----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning", "Hybrid", "Shared"])
def test_a_session_without_any_key_does_not_start(pattern: str) -> None:
    session = make_session(pattern)
    plan = decide(observe(session), NO_KEY)
    assert created(plan, "Pod") == []
    after = with_status(session, plan)
    assert after.status.phase == "Pending"
    assert conditions(after)["CredentialsReady"] == ("False", "NoCredentials")
    assert conditions(after)["Ready"] == ("False", "NoCredentials")
    assert reasons(plan) == ["NoCredentials"]
    [condition] = [c for c in after.status.conditions if c.type == "CredentialsReady"]
    assert "spec.credentials.secretName" in condition.message
    # Level-based: asked again, the same status and no second Event.
    assert decide(observe(after), NO_KEY).empty


def test_a_key_from_the_operators_runner_env_counts() -> None:
    session = make_session("LongRunning")
    plan = decide(observe(session), CONFIG)
    assert len(created(plan, "Pod")) == 1
    assert conditions(with_status(session, plan))["CredentialsReady"] == (
        "True",
        "OperatorProvided",
    )


def test_a_running_pod_without_a_key_is_not_reported_ready() -> None:
    """A pod made before keys were required runs on, but the phase says it cannot work."""
    session = make_session("LongRunning", status={"phase": "Running", "podName": "x"})
    pod = make_pod(session, 1)
    plan = decide(observe(session, [pod]), NO_KEY)
    after = with_status(session, plan)
    assert plan.delete_pods == []
    assert after.status.phase == "Pending"
    assert conditions(after)["Ready"] == ("False", "NoCredentials")
    assert conditions(after)["PodReady"] == ("True", "PodReady")


# --- wake values -------------------------------------------------------------------------


def test_wake_token_keeps_short_values_and_hashes_long_ones() -> None:
    assert wake_token("first-wake") == "first-wake"
    long = "x" * 10 * 1024
    assert wake_token(long).startswith("sha256:") and len(wake_token(long)) <= 256
    assert wake_token(long) != wake_token(long + "y")
    assert len(wake_token("y" * MAX_OBSERVED_WAKE)) == MAX_OBSERVED_WAKE
    # A value that merely looks like a hash is hashed too, so no two values share one.
    assert wake_token(wake_token(long)) != wake_token(long)


def asleep(world: World) -> None:
    world.advance(6)
    world.step()
    world.finish_deletions()
    world.advance(100)


def test_a_10_kib_wake_value_wakes_once_and_status_stays_writable() -> None:
    world = hybrid_world()
    asleep(world)
    value = "w" * 10 * 1024
    wake(world, value)
    plan = world.step()  # with_status validates against the status schema (maxLength 256)
    assert len(created(plan, "Pod")) == 1
    assert world.session.status.observed_wake == wake_token(value)
    world.run_pod()
    world.settle()
    assert world.session.status.phase == "Running"
    # The same value does not wake it again after the next sleep.
    asleep(world)
    world.settle()
    assert world.pods == {}
    assert world.session.status.wake_count == 1


def test_a_long_wake_value_while_awake_is_recorded_bounded() -> None:
    world = hybrid_world()
    wake(world, "v" * 5000)
    world.step()
    assert world.session.status.observed_wake == wake_token("v" * 5000)


# --- times in the future -----------------------------------------------------------------


@pytest.mark.parametrize("recorded", ["9999-12-31T23:59:59Z", "9000-01-01T00:00:00Z"])
def test_a_future_last_activity_neither_crashes_nor_keeps_the_session_awake(
    recorded: str,
) -> None:
    world = hybrid_world()
    status: dict[str, Any] = world.session.status.model_dump(by_alias=True, exclude_none=True)
    status["lastActivityTime"] = recorded
    world.session = world.session.model_copy(
        update={"status": type(world.session.status).model_validate(status)}
    )
    world.advance(6)
    plan = world.step()  # 9999-12-31 + idleTimeout used to raise OverflowError
    assert plan.scaled_down
    assert world.session.status.phase == "Idle"
    assert world.session.status.last_activity_time == timestamp(T0)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("defaultIdleTimeout", "fifteen minutes", "is not a duration"),
        ("defaultIdleTimeout", "500ms", "shorter than 1s"),
        ("defaultIdleTimeout", "9999999999h", "longer than the longest duration"),
        ("defaultBackgroundTaskTimeout", "1 hour", "is not a duration"),
        ("defaultBackgroundTaskTimeout", "9999999999h", "longer than the longest duration"),
        ("defaultActiveDeadlineSeconds", 0, "greater than or equal to 1"),
        ("defaultStorageClassName", "Fast SSD", "should match pattern"),
        ("imagePullSecrets", ["registry key"], "should match pattern"),
    ],
)
def test_a_default_the_reconciles_use_is_checked_at_start(
    key: str, value: object, problem: str
) -> None:
    # Unchecked, each failed every reconcile that used it instead (a timeout that does not
    # parse; a pod the API server refuses).
    with pytest.raises(ValidationError) as raised:
        OperatorConfig.model_validate({key: value})
    (error,) = raised.value.errors()
    assert error["loc"][0] == key
    assert problem in error["msg"]


def test_runner_env_key_does_not_duplicate_the_sessions_own() -> None:
    from corral.render import render_pod

    session = make_session("LongRunning", credentials={"secretName": "k"})
    env = render_pod(session, CONFIG, 1)["spec"]["containers"][0]["env"]
    keys = [e for e in env if e["name"] == runtime.ENV_API_KEY]
    assert len(keys) == 1 and "valueFrom" in keys[0]


def test_a_lost_pod_whose_replacement_is_refused_counts_one_restart() -> None:
    """Fix: the old pod name stayed in status, so every retry counted it lost again."""
    session = make_session(
        "LongRunning",
        status={"phase": "Running", "podName": "demo-gone", "attempts": 1},
        credentials={"secretName": "k"},
    )
    gone = observe(session, secret_check=SecretCheck.UNLABELLED, pod_gone="demo-gone")
    plan = decide(gone, CONFIG)
    after = with_status(session, plan)
    assert after.status.restarts == 1 and after.status.pod_name is None
    again = decide(
        observe(after, now=T0 + timedelta(seconds=5), secret_check=SecretCheck.UNLABELLED), CONFIG
    )
    assert with_status(after, again).status.restarts == 1
    assert "PodLost" not in reasons(again)
