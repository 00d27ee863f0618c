"""Hand edits to a session's Service and NetworkPolicy are found and undone.

The operator keeps, per child, the fields of its spec that it sets (as canonical JSON), from
every watch event; `repair_patch` compares them with the desired ones and returns the JSON
merge patch that restores them (nulls for keys someone added, whole lists replaced). Fields
the API server fills in (a Service's clusterIP, ...) are not compared.
"""

from __future__ import annotations

import json
from typing import Any

# The spec fields the operator owns, per kind.
OWNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Service": ("type", "selector", "ports"),
    "NetworkPolicy": ("podSelector", "policyTypes", "ingress", "egress"),
}


def _prune(value: Any) -> Any:
    """`value` without None, [] and {} (the API server omits empty fields)."""
    # One pass, and no call for a scalar: run on every watch event of a child and every
    # decision, over NetworkPolicies of dozens of rules.
    if isinstance(value, dict):
        pruned = {}
        for key, item in value.items():
            if isinstance(item, dict | list):
                item = _prune(item)
            if item is not None and item != [] and item != {}:
                pruned[key] = item
        return pruned
    if isinstance(value, list):
        return [_prune(item) if isinstance(item, dict | list) else item for item in value]
    return value


def owned_spec(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    spec = body.get("spec") or {}
    return _prune({name: spec.get(name) for name in OWNED_FIELDS[kind]})  # type: ignore[no-any-return]


def live_spec(kind: str, body: dict[str, Any]) -> str | None:
    """What the store keeps of a child's spec: canonical JSON of its owned fields."""
    if kind not in OWNED_FIELDS:
        return None
    return json.dumps(owned_spec(kind, body), sort_keys=True, separators=(",", ":"))


def merge_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns `live` into `desired` (objects only)."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = live.get(key)
        if have == want:
            continue
        if isinstance(have, dict) and isinstance(want, dict):
            patch[key] = merge_patch(have, want)
        else:
            patch[key] = want
    for key in live:
        if key not in desired:
            patch[key] = None
    return patch


def repair_patch(kind: str, live: str | None, desired: dict[str, Any]) -> dict[str, Any] | None:
    """A patch restoring `desired`'s owned fields on the live child; None when they match
    or the live spec is not known yet."""
    if live is None:
        return None
    have = json.loads(live)
    want = owned_spec(kind, desired)
    if have == want:
        return None
    return {"spec": merge_patch(have, want)}
