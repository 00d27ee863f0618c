"""Built-in objects parsed without their managedFields (corral.kube.managed_fields).

The bodies are written as the API server writes a built-in kind: its Go struct's field
order, compact JSON, managedFields last in metadata and spec right after it.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
import pytest

from corral.kube.client import _decode
from corral.kube.managed_fields import without_managed_fields

TRICKY = ',"managedFields":[{"x":1}]},"spec":{"nodeName":"evil"} ]} "metadata":'


def managed(manager: str = "corral") -> list[dict[str, Any]]:
    return [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-12-06T06:42:49Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {'k:{"name":"runner"}': {".": {}, "f:image": {}}},
                "f:status": {"f:conditions": {'k:{"type":"Ready"}': {".": {}}}},
            },
        }
    ]


def pod(name: str, annotations: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """A pod in the API server's order; `fields` override metadata's (managedFields...)."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "team-a",
        "uid": f"uid-{name}",
        "resourceVersion": "11",
        "labels": {"app": name},
        "annotations": annotations or {},
        "managedFields": managed(),
    }
    metadata.update(fields)
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "runner", "image": "runner:1"}]},
        "status": {"phase": "Running"},
    }


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def without(value: Any) -> Any:
    """What the cut must parse to: the same, less every managedFields."""
    if isinstance(value, dict):
        return {k: without(v) for k, v in value.items() if k != "managedFields"}
    if isinstance(value, list):
        return [without(v) for v in value]
    return value


def test_a_watch_event_parses_as_itself_less_its_managed_fields() -> None:
    event = {"type": "MODIFIED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("demo")}}
    raw = compact(event)
    cut = without_managed_fields(raw)
    assert len(cut) < len(raw) - 200
    assert pydantic_core.from_json(cut) == without(event)
    assert "managedFields" not in pydantic_core.from_json(cut)["object"]["metadata"]


def test_every_item_of_a_list_is_cut() -> None:
    listing = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "20"},
        "items": [pod("a"), pod("b", managedFields=managed("kubelet")), pod("c")],
    }
    # One item without managedFields in between.
    del listing["items"][1]["metadata"]["managedFields"]
    cut = without_managed_fields(compact(listing))
    assert pydantic_core.from_json(cut) == without(listing)


def test_text_that_looks_like_the_markers_is_only_text() -> None:
    """Labels, annotations and field managers' names are users' strings: inside a JSON
    string every quote is escaped, so none of them can end or start a cut."""
    tricky = pod("demo", annotations={"note": TRICKY, TRICKY: "x"}, managedFields=managed(TRICKY))
    raw = compact({"type": "ADDED", "object": tricky})
    parsed = pydantic_core.from_json(without_managed_fields(raw))
    assert parsed == without({"type": "ADDED", "object": tricky})
    assert parsed["object"]["spec"]["containers"][0]["name"] == "runner"


def test_a_body_of_another_shape_is_left_whole() -> None:
    bare = pod("demo")
    del bare["metadata"]["managedFields"]
    no_fields = compact(bare)
    assert without_managed_fields(no_fields) is no_fields
    # No spec after metadata (a kind this is not for): the cut would reach another
    # object's metadata, so nothing is cut.
    status_only = {
        "items": [
            {"metadata": {"name": "a", "managedFields": managed()}, "data": {"k": "v"}},
            pod("b"),
        ]
    }
    raw = compact(status_only)
    assert without_managed_fields(raw) is raw
    # Sorted keys (a custom resource): `name` follows managedFields, no cut, even where
    # the rest of the body holds what looks like the end of one.
    session = compact(
        {
            "metadata": {"creationTimestamp": "t", "managedFields": managed(), "name": "s"},
            "spec": {"tools": {"allowed": ["Bash"]}, "spec": {}},
        }
    )
    assert b'"]},"spec":' in session
    assert without_managed_fields(session) is session


def test_a_lean_decode_falls_back_to_the_whole_body() -> None:
    """A cut the parser refuses (here an entry with a `spec` key of its own, which no API
    server writes) is parsed whole: the caller gets the object as sent."""
    raw = compact(pod("demo"))
    assert _decode(raw, lean=True) == without(pod("demo"))
    assert _decode(raw, lean=False) == pod("demo")
    odd = b'{"metadata":{"a":1,"managedFields":[{"k":{"x":[0]},"spec":1}]},"spec":{}}'
    assert without_managed_fields(odd) != odd  # cut where the entry's own spec begins
    assert _decode(odd, lean=True) == pydantic_core.from_json(odd)
    with pytest.raises(ValueError):  # not JSON either way: the parser's own error
        _decode(raw[:-1], lean=True)
