"""What the store keeps of a child's spec: its owned fields with empty values left out."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from corral.controller.drift import _prune, live_spec, owned_spec

SCALARS = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["", "a", "TCP"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "ports", "from"]), inner, max_size=4)
    ),
    max_leaves=30,
)


def _reference(value: Any) -> Any:
    """The definition: None, [] and {} dropped from objects, bottom-up; lists keep items."""
    if isinstance(value, dict):
        pruned = {k: _reference(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_reference(v) for v in value]
    return value


@given(VALUES)
def test_prune_matches_its_definition(value: Any) -> None:
    assert _prune(value) == _reference(value)


def test_empty_values_go_and_a_zero_stays() -> None:
    spec = {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": [], "ports": [{"port": 0, "protocol": None}]}, {}],
        "ingress": None,
    }
    assert owned_spec("NetworkPolicy", {"spec": spec}) == {
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": 0}]}, {}],
    }
    service = {"spec": {"type": "ClusterIP", "selector": {"a": "b"}, "clusterIP": "10.0.0.1"}}
    assert live_spec("Service", service) == '{"selector":{"a":"b"},"type":"ClusterIP"}'
