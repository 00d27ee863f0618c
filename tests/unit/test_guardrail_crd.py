"""The SessionGuardrail CRD (the admin guardrails' parameters): generated from its models,
committed in crds/, and checking what an admin writes as the API server will."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from corral import cli
from corral.api import crd
from corral.api.guardrails import SessionGuardrailSpec

ROOT = Path(__file__).resolve().parents[2]


def test_committed_guardrail_crd_matches_the_models() -> None:
    """Fix: `corral crd --guardrails -o crds/sessionguardrails.yaml`."""
    committed = (ROOT / "crds" / "sessionguardrails.yaml").read_text(encoding="utf-8")
    assert committed == crd.guardrail_crd_yaml()


def test_cli_prints_and_checks_the_guardrail_crd(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["crd", "--guardrails"]) == 0
    assert capsys.readouterr().out == crd.guardrail_crd_yaml()
    target = tmp_path / "sessionguardrails.yaml"
    assert cli.main(["crd", "--guardrails", "-o", str(target)]) == 0
    assert cli.main(["crd", "--guardrails", "-o", str(target), "--check"]) == 0
    # The AgentSession CRD is not the guardrail CRD.
    assert cli.main(["crd", "-o", str(target), "--check"]) == 1


def test_guardrail_crd_names_and_scope() -> None:
    body = crd.guardrail_resource_definition()
    assert body["metadata"]["name"] == "sessionguardrails.corral.dev"
    assert body["spec"]["scope"] == "Namespaced"  # per namespace: the policy's paramRef
    assert body["spec"]["names"]["kind"] == "SessionGuardrail"
    # No category: `kubectl get corral` stays the sessions of users who cannot read these.
    assert "categories" not in body["spec"]["names"]
    [version] = body["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(spec) == {
        "allowedImagePrefixes", "allowedEgressCidrs", "allowedDomains",
        "maxResources", "maxStorage", "maxBudgetUsd",
    }  # fmt: skip
    assert all("default" not in field for field in spec.values())  # unset: not restricted


def test_unset_restricts_nothing_and_empty_allows_nothing() -> None:
    assert SessionGuardrailSpec().model_dump(exclude_none=True) == {}
    empty = SessionGuardrailSpec.model_validate({"allowedEgressCidrs": []})
    assert empty.model_dump(by_alias=True, exclude_none=True) == {"allowedEgressCidrs": []}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"allowedEgressCidrs": ["10.0.0.0/8", "10.0.0.0"]}, "must be CIDRs such as 10.20.0.0/16"),
        ({"allowedEgressCidrs": ["::ffff:10.0.0.1/128"]}, "must be CIDRs"),
        ({"allowedDomains": ["https://github.com"]}, "should match pattern"),
        ({"allowedDomains": ["GitHub.com"]}, "should match pattern"),  # the policy compares lower
        ({"allowedDomains": ["github.*"]}, "should match pattern"),
        ({"allowedDomains": ["github.com:0"]}, "should match pattern"),
        ({"allowedImagePrefixes": ["a b/"]}, "should match pattern"),
        ({"maxResources": {"cpu": "two"}}, "should match pattern"),
        ({"maxResources": {"gpu": "1"}}, "Extra inputs are not permitted"),
        ({"maxBudgetUsd": 0}, "greater than 0"),
        ({"allowedDomains": ["a.com", "a.com"]}, "must not repeat"),
    ],
)
def test_bad_guardrails_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SessionGuardrailSpec.model_validate(spec)


@pytest.mark.parametrize(
    "domain", ["github.com", "*.pypi.org", "*", "*:443", "git.internal.example:8443", "localhost"]
)
def test_domain_patterns_the_policy_understands(domain: str) -> None:
    assert SessionGuardrailSpec.model_validate({"allowedDomains": [domain]}).allowed_domains == [
        domain
    ]
