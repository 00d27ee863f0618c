"""The Service and NetworkPolicy stay what the session asks for: spec.network changes and
hand edits are put back in place (compared field by field, not by an annotation)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.controller.drift import live_spec, merge_patch
from corral.controller.lifecycle import Observed, decide
from corral.render import render_network_policy, render_service

CONFIG = OperatorConfig(runner_env={runtime.ENV_API_KEY: "sk-ant-test"})


def session(
    egress: list[dict[str, object]], generation: int = 1, observed: int | None = None
) -> AgentSession:
    """`observed`: the generation the operator's last status write saw."""
    return AgentSession.model_validate(
        {
            "metadata": {"name": "net", "namespace": "ns", "uid": "u-1", "generation": generation},
            "spec": {"pattern": "LongRunning", "network": {"egress": egress}},
            "status": {} if observed is None else {"observedGeneration": observed},
        }
    )


def observe(s: AgentSession, policy: dict[str, Any], service: dict[str, Any]) -> Observed:
    """`policy` and `service` as the watch shows them (live objects)."""
    specs = {
        kind: spec
        for kind, body in (("NetworkPolicy", policy), ("Service", service))
        if (spec := live_spec(kind, body)) is not None
    }
    return Observed(
        session=s,
        pods=[],
        has_service=True,
        has_network_policy=True,
        has_pvc=False,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        live_specs=specs,
    )


def patches(s: AgentSession, policy: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    plan = decide(observe(s, policy, service), CONFIG)
    return {kind: patch for kind, _, patch in plan.patch_children}


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_unchanged_children_are_left_alone() -> None:
    s = session([])
    live_policy = render_network_policy(s, CONFIG)
    live_service = render_service(s)
    # What the API server adds to a Service is not the session's business.
    live_service["spec"] |= {"clusterIP": "10.96.0.7", "sessionAffinity": "None"}
    plan = decide(observe(s, live_policy, live_service), CONFIG)
    assert plan.patch_children == []
    assert not plan.events


def test_changed_egress_patches_the_policy_spec() -> None:
    before, after = session([]), session([{"cidr": "203.0.113.7/32", "ports": [{"port": 5432}]}])
    found = patches(after, render_network_policy(before, CONFIG), render_service(after))
    blocks = [
        peer["ipBlock"]["cidr"]
        for rule in found["NetworkPolicy"]["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    assert "203.0.113.7/32" in blocks
    assert "Service" not in found


def test_the_event_says_whether_the_spec_moved_or_a_hand_edit_was_undone() -> None:
    before = session([], generation=1, observed=1)
    edited = render_network_policy(before, CONFIG)
    edited["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    hand = decide(observe(before, edited, render_service(before)), CONFIG)
    changed = session([{"cidr": "203.0.113.7/32"}], generation=2, observed=1)
    followed = decide(
        observe(changed, render_network_policy(before, CONFIG), render_service(changed)), CONFIG
    )
    assert [e.reason for e in hand.events] == ["NetworkPolicyRestored"]
    assert [e.reason for e in followed.events] == ["NetworkPolicyUpdated"]


def test_hand_edited_policy_is_restored() -> None:
    s = session([])
    wanted = render_network_policy(s, CONFIG)
    edited = copy.deepcopy(wanted)
    edited["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    # A label added to the pod selector makes the policy select no pod at all.
    edited["spec"]["podSelector"]["matchLabels"]["extra"] = "x"
    patch = patches(s, edited, render_service(s))["NetworkPolicy"]
    assert patch["spec"]["podSelector"]["matchLabels"]["extra"] is None
    assert apply_merge_patch(edited, patch)["spec"] == wanted["spec"]


def test_hand_edited_service_is_restored() -> None:
    s = session([])
    wanted = render_service(s)
    edited = copy.deepcopy(wanted)
    edited["spec"]["type"] = "NodePort"
    edited["spec"]["ports"][0]["nodePort"] = 30080
    edited["spec"]["selector"] = {"app": "somebody-else"}
    patch = patches(s, render_network_policy(s, CONFIG), edited)["Service"]
    assert apply_merge_patch(edited, patch)["spec"] == wanted["spec"]


def test_merge_patch_nulls_what_was_added_and_replaces_lists() -> None:
    live = {"a": {"x": 1, "y": 2}, "l": [1, 2, 3], "gone": True}
    desired = {"a": {"x": 1}, "l": [1]}
    assert merge_patch(live, desired) == {"a": {"y": None}, "l": [1], "gone": None}
    assert apply_merge_patch(live, merge_patch(live, desired)) == desired


# --- children of its own: no pod while a name is taken or the volume is too large ----------


def hybrid(size: str = "5Gi", status: dict[str, Any] | None = None) -> AgentSession:
    return AgentSession.model_validate(
        {
            "metadata": {"name": "web.app", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"pattern": "Hybrid", "storage": {"size": size}},
            "status": status or {},
        }
    )


def fresh(s: AgentSession, conflicts: tuple[str, ...] = (), has_pvc: bool = False) -> Observed:
    return Observed(
        session=s,
        pods=[],
        has_service=False,
        has_network_policy=False,
        has_pvc=has_pvc,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        name_conflicts=conflicts,
    )


def conditions(plan: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (plan.status_patch or {}).get("conditions", [])}


def test_a_taken_name_means_no_pod_a_condition_and_one_warning() -> None:
    taken = ("Service 'web-app-1234abcd' already exists and is not this session's (...)",)
    plan = decide(fresh(hybrid(), taken), CONFIG)
    assert [m["kind"] for m in plan.create if m["kind"] == "Pod"] == []
    # The children are tried again (the other object may be deleted meanwhile).
    assert {m["kind"] for m in plan.create} >= {"Service", "NetworkPolicy"}
    found = conditions(plan)
    assert found["ChildrenReady"]["status"] == "False"
    assert found["ChildrenReady"]["reason"] == "NameTaken"
    assert taken[0] in found["ChildrenReady"]["message"]
    assert found["Ready"]["status"] == "False"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "NameTaken")]
    assert plan.requeue_after is not None
    # Decided again with that status: no second Event.
    again = hybrid(status=plan.status_patch)
    assert decide(fresh(again, taken), CONFIG).events == []
    # Once the name is free the pod starts and the condition goes.
    free = decide(fresh(again), CONFIG)
    assert [m["kind"] for m in free.create].count("Pod") == 1
    assert "ChildrenReady" not in conditions(free)


def test_a_volume_over_the_maximum_is_refused() -> None:
    config = OperatorConfig(max_storage="10Gi", runner_env={runtime.ENV_API_KEY: "sk-ant-test"})
    plan = decide(fresh(hybrid("20Gi")), config)
    assert {m["kind"] for m in plan.create} == {"Service", "NetworkPolicy"}  # no PVC, no pod
    found = conditions(plan)["ChildrenReady"]
    assert (found["status"], found["reason"]) == ("False", "StorageTooLarge")
    assert "maxStorage 10Gi" in found["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "StorageTooLarge")]
    # A volume made before the maximum was lowered is kept and used.
    kept = decide(fresh(hybrid("20Gi"), has_pvc=True), config)
    assert [m["kind"] for m in kept.create].count("Pod") == 1
