"""spec.network changes reach the existing NetworkPolicy in place."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller.lifecycle import SPEC_HASH_ANNOTATION, Observed, decide

CONFIG = OperatorConfig()


def session(egress: list[dict[str, object]]) -> AgentSession:
    return AgentSession.model_validate(
        {
            "metadata": {"name": "net", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"pattern": "LongRunning", "network": {"egress": egress}},
        }
    )


def observe(s: AgentSession, has_policy: bool, policy_hash: str | None) -> Observed:
    return Observed(
        session=s,
        pods=[],
        has_service=True,
        has_network_policy=has_policy,
        has_pvc=False,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        network_policy_hash=policy_hash,
    )


def created_policy_hash(s: AgentSession) -> str:
    plan = decide(observe(s, has_policy=False, policy_hash=None), CONFIG)
    [policy] = [m for m in plan.create if m["kind"] == "NetworkPolicy"]
    return str(policy["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


def test_unchanged_policy_is_left_alone() -> None:
    s = session([])
    plan = decide(observe(s, True, created_policy_hash(s)), CONFIG)
    assert plan.patch_children == []


def test_changed_egress_patches_the_policy_spec() -> None:
    before, after = session([]), session([{"cidr": "203.0.113.7/32", "ports": [{"port": 5432}]}])
    assert created_policy_hash(before) != created_policy_hash(after)
    plan = decide(observe(after, True, created_policy_hash(before)), CONFIG)
    [(kind, name, patch)] = plan.patch_children
    assert (kind, name) == ("NetworkPolicy", "net")
    assert patch["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == created_policy_hash(after)
    blocks = [
        peer["ipBlock"]["cidr"]
        for rule in patch["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    assert "203.0.113.7/32" in blocks
