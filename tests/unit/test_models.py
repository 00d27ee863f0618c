"""The models refuse what the CRD refuses, and the examples are valid sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from pydantic import ValidationError

from corral.api import v1alpha1 as api
from corral.api.v1alpha1 import (
    AgentSession,
    AgentSessionSpec,
    AgentSessionStatus,
    ApiModel,
    CredentialsSpec,
    Pattern,
)
from strategies import (
    CREDENTIALS_EXAMPLE,
    INVALID_SPECS,
    SESSION_EXAMPLES,
    Invalid,
    sessions,
    specs,
)
from strategies import load_manifest as load


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda case: case.why)
def test_models_refuse_invalid_specs(case: Invalid) -> None:
    with pytest.raises(ValidationError) as error:
        AgentSessionSpec.model_validate(case.spec)
    assert case.message in str(error.value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        AgentSessionSpec.model_validate({"pattern": "LongRunning", "replicas": 2})


def test_status_ignores_unknown_fields() -> None:
    # An older operator must be able to read status written by a newer one.
    status = AgentSessionStatus.model_validate({"phase": "Running", "newField": 1})
    assert status.phase == "Running"


def test_every_rule_with_a_python_check_is_exercised() -> None:
    """Each CEL rule the models repeat in Python has an invalid case that trips it."""
    rules = [
        rule
        for model in vars(api).values()
        if isinstance(model, type) and issubclass(model, ApiModel)
        for rule in model.cel_rules
        if rule.check is not None
    ]
    errors = []
    for case in INVALID_SPECS:
        with pytest.raises(ValidationError) as error:
            AgentSessionSpec.model_validate(case.spec)
        errors.append(str(error.value))
    assert [r.message for r in rules if not any(r.message in e for e in errors)] == []


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/8", "10.1.2.3/8", "203.0.113.7/32", "2001:db8::/32", "0.0.0.0/0", "::/0"]
)
def test_cidrs_the_server_accepts(cidr: str) -> None:
    spec = {"pattern": "LongRunning", "network": {"egress": [{"cidr": cidr}]}}
    AgentSessionSpec.model_validate(spec)


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/08", "::ffff:10.0.0.1/128", "fe80::/10", "x/8"]
)
def test_cidrs_the_server_refuses(cidr: str) -> None:
    with pytest.raises(ValidationError):
        AgentSessionSpec.model_validate(
            {"pattern": "LongRunning", "network": {"egress": [{"cidr": cidr}]}}
        )


def test_defaults() -> None:
    spec = AgentSessionSpec(pattern=Pattern.LONG_RUNNING)
    assert spec.max_turns == 50
    assert spec.permission_mode == "default"
    assert (spec.resources.cpu, spec.resources.memory, spec.resources.disk) == ("1", "1Gi", "5Gi")
    assert spec.network.allow_public_https is True
    assert CredentialsSpec(secret_name="s").key == "ANTHROPIC_API_KEY"


@given(specs())
def test_spec_round_trips_through_the_wire_format(spec: AgentSessionSpec) -> None:
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert AgentSessionSpec.model_validate(wire) == spec
    assert AgentSessionSpec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec


@given(sessions())
def test_session_manifest_round_trips(session: AgentSession) -> None:
    from strategies import session_manifest

    again = AgentSession.from_manifest(session_manifest(session))
    assert again.spec == session.spec
    assert again.metadata.name == session.metadata.name


def test_there_is_one_example_per_pattern() -> None:
    patterns = {load(path)["spec"]["pattern"] for path in SESSION_EXAMPLES}
    assert patterns == {p.value for p in Pattern}


@pytest.mark.parametrize("path", SESSION_EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_session(path: Path) -> None:
    body = load(path)
    session = AgentSession.from_manifest(body)
    assert session.kind == "AgentSession" and session.api_version == "corral.dev/v1alpha1"
    # No namespace: the examples apply into whichever namespace they are given.
    assert "namespace" not in body["metadata"]


def test_examples_use_the_example_secret() -> None:
    secret = load(CREDENTIALS_EXAMPLE)
    assert secret["kind"] == "Secret"
    for path in SESSION_EXAMPLES:
        credentials = AgentSession.from_manifest(load(path)).spec.credentials
        assert credentials is not None
        assert credentials.secret_name == secret["metadata"]["name"]
        assert credentials.key in secret["stringData"]
