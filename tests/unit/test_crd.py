"""The generated CRD: structural, described, bounded, in sync with the models and crds/."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from test_models import SESSION_EXAMPLES, load

from corral import cli
from corral.api import crd
from corral.api.v1alpha1 import AgentSessionSpec
from strategies import specs

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "agentsessions.yaml"

Schema = dict[str, Any]


@cache
def _definition() -> dict[str, Any]:
    return crd.custom_resource_definition()


def version() -> dict[str, Any]:
    versions = _definition()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def root() -> Schema:
    schema = version()["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def spec_schema() -> Schema:
    schema = root()["properties"]["spec"]
    assert isinstance(schema, dict)
    return schema


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path (`.a.b[]`)."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def test_committed_crd_matches_the_models() -> None:
    """Fails when the models changed and crds/ did not.

    Fix: `corral crd -o crds/agentsessions.yaml`.
    """
    assert CRD_FILE.read_text(encoding="utf-8") == crd.crd_yaml()


def test_crd_yaml_parses_back_to_the_same_object() -> None:
    assert yaml.safe_load(crd.crd_yaml()) == crd.custom_resource_definition()


def test_names_and_scope() -> None:
    body = crd.custom_resource_definition()
    assert body["apiVersion"] == "apiextensions.k8s.io/v1"
    assert body["metadata"]["name"] == "agentsessions.corral.dev"
    spec = body["spec"]
    assert spec["group"] == "corral.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "AgentSession",
        "listKind": "AgentSessionList",
        "plural": "agentsessions",
        "singular": "agentsession",
        "shortNames": ["ags"],
        "categories": ["corral"],
    }
    assert version()["name"] == "v1alpha1"
    assert version()["served"] and version()["storage"]
    assert version()["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns)[:8] == [
        "Pattern",
        "Phase",
        "Ready",
        "Reason",
        "Turns",
        "Cost",
        "Last Activity",
        "Age",
    ]
    assert all("priority" not in columns[name] for name in ("Ready", "Reason"))
    assert columns["Pattern"]["jsonPath"] == ".spec.pattern"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["Last Activity"]["type"] == "date"
    assert columns["Next Durable Task"]["jsonPath"] == ".status.nextDurableWakeupTime"
    assert columns["Next Durable Task"]["type"] == "string"
    # The cost the session cannot report itself, beside the SDK's estimate (`Cost`).
    assert columns["Metered Cost"]["jsonPath"] == ".status.modelUsage.costUsd"
    assert columns["Metered Cost"]["priority"] == 1
    # The Ready condition's status and reason (a JSONPath filter on the conditions list).
    ready = '.status.conditions[?(@.type=="Ready")]'
    assert columns["Ready"]["jsonPath"] == ready + ".status"
    assert columns["Reason"]["jsonPath"] == ready + ".reason"
    # Each column points at a field the schema has.
    paths = {path for path, _ in walk(root())}
    for column in columns.values():
        path = column["jsonPath"].replace(ready, ".status.conditions[]")
        if not path.startswith(".metadata"):
            assert path in paths


def test_conditions_follow_kep_1623() -> None:
    """metav1.Condition's own validation: CamelCase reason (pattern, minLength), type
    pattern and length, status enum, required fields."""
    condition = root()["properties"]["status"]["properties"]["conditions"]["items"]
    props = condition["properties"]
    assert props["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    assert props["reason"]["minLength"] == 1
    assert props["reason"]["maxLength"] == 1024
    assert props["type"]["pattern"].endswith("(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
    assert props["type"]["maxLength"] == 316
    assert props["status"]["enum"] == ["True", "False", "Unknown"]
    assert props["message"]["maxLength"] == 32768
    assert props["lastTransitionTime"]["format"] == "date-time"
    assert set(condition["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_schema_is_structural() -> None:
    for path, node in walk(root()):
        assert "type" in node, path
        for keyword in ("$ref", "anyOf", "allOf", "oneOf", "not", "title", "$defs", "nullable"):
            assert keyword not in node, f"{path}: {keyword}"
        assert node.get("additionalProperties", True) is not False, path
        if node["type"] == "object" and "properties" in node:
            assert set(node.get("required", [])) <= set(node["properties"]), path


def test_every_field_has_a_description() -> None:
    """So that `kubectl explain agentsession.spec.resources` explains."""
    for path, node in walk(root()):
        # The API server owns metadata's schema: a CRD may only say it is an object.
        if path and path != ".metadata" and not path.endswith("[]"):
            assert node.get("description"), path


def test_spec_strings_and_lists_are_bounded() -> None:
    """Bounded sizes keep the CEL cost estimate within the API server's budget."""
    for path, node in walk(spec_schema()):
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, path
        if node["type"] == "array":
            assert "maxItems" in node, path


def test_defaults_enums_and_bounds_survive() -> None:
    props = spec_schema()["properties"]
    assert props["pattern"]["enum"] == ["Ephemeral", "LongRunning", "Hybrid", "Shared"]
    assert props["maxTurns"] == {
        "description": props["maxTurns"]["description"],
        "type": "integer",
        "default": 50,
        "minimum": 1,
        "maximum": 10000,
    }
    assert props["maxBudgetUsd"]["minimum"] == 0
    assert props["maxBudgetUsd"]["exclusiveMinimum"] is True
    # Object defaults are spelt out, so CEL rules checked against them see every field.
    assert props["resources"]["default"] == {"cpu": "1", "memory": "1Gi", "disk": "5Gi"}
    assert props["network"]["default"] == {"allowPublicHttps": True}
    assert props["resources"]["properties"]["memory"]["default"] == "1Gi"
    assert props["agents"]["minItems"] == 2
    assert props["idleTimeout"]["pattern"].startswith("^")
    assert spec_schema()["required"] == ["pattern"]
    assert root()["required"] == ["spec"]


def test_list_types() -> None:
    props = spec_schema()["properties"]
    assert props["agents"]["x-kubernetes-list-type"] == "map"
    assert props["agents"]["x-kubernetes-list-map-keys"] == ["name"]
    assert props["mcpServers"]["x-kubernetes-list-type"] == "map"
    assert props["allowedTools"]["x-kubernetes-list-type"] == "set"
    namespaces = props["network"]["properties"]["ingressFromNamespaces"]
    assert namespaces["x-kubernetes-list-type"] == "set"
    conditions = root()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    for path, node in walk(root()):
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"]["required"], path  # map keys must be required


def test_cel_rules_sit_where_they_belong() -> None:
    spec_rules = {r["rule"]: r for r in spec_schema()["x-kubernetes-validations"]}
    assert "self.pattern == oldSelf.pattern" in spec_rules  # the transition rule
    assert spec_rules["self.pattern == oldSelf.pattern"]["fieldPath"] == ".pattern"
    resources = spec_schema()["properties"]["resources"]
    assert any("quantity(self.memory)" in r["rule"] for r in resources["x-kubernetes-validations"])
    egress = spec_schema()["properties"]["network"]["properties"]["egress"]["items"]
    assert any(r["rule"] == "isCIDR(self.cidr)" for r in egress["x-kubernetes-validations"])
    # Every fieldPath names a property of the object the rule is on.
    for path, node in walk(root()):
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" in rule:
                assert rule["fieldPath"].lstrip(".") in node["properties"], (path, rule)


def test_status_is_permissive_but_typed() -> None:
    status = root()["properties"]["status"]
    assert "required" not in status
    assert "x-kubernetes-validations" not in status
    assert status["properties"]["lastActivityTime"]["format"] == "date-time"


def _closed(schema: Schema) -> Schema:
    """The schema with unknown fields refused and sets unique, for jsonschema to check."""
    schema = copy.deepcopy(schema)
    for _, node in walk(schema):
        if "properties" in node:
            node["additionalProperties"] = False
        if node.get("x-kubernetes-list-type") == "set":
            node["uniqueItems"] = True
    return schema


@cache
def _spec_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_closed(spec_schema()))


def _validate_spec(spec: dict[str, Any]) -> None:
    _spec_validator().validate(spec)


@given(specs())
def test_every_spec_the_models_accept_fits_the_openapi_schema(spec: AgentSessionSpec) -> None:
    _validate_spec(spec.model_dump(by_alias=True, exclude_none=True, mode="json"))


@pytest.mark.parametrize("path", SESSION_EXAMPLES, ids=lambda p: p.name)
def test_examples_fit_the_openapi_schema(path: Path) -> None:
    _validate_spec(load(path)["spec"])


def _apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting as the API server does it (absent fields only, top-down)."""
    if not isinstance(value, dict):
        return value
    result = dict(value)
    for name, child in schema.get("properties", {}).items():
        if name not in result and "default" in child:
            result[name] = copy.deepcopy(child["default"])
        if name in result:
            if child["type"] == "array" and "items" in child:
                result[name] = [_apply_defaults(child["items"], v) for v in result[name]]
            else:
                result[name] = _apply_defaults(child, result[name])
    return result


@given(specs())
def test_crd_defaults_equal_model_defaults(spec: AgentSessionSpec) -> None:
    """What the API server fills in is what the models assume when a field is absent."""
    sparse = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    sparse["pattern"] = spec.pattern
    defaulted = _apply_defaults(spec_schema(), sparse)
    assert AgentSessionSpec.model_validate(defaulted) == spec
    everything = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    # The server stores no empty lists or maps the user did not write; that is the only
    # difference.
    assert _without_empty_lists(everything) == _without_empty_lists(defaulted)


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _without_empty_lists(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ([], {})}
    if isinstance(value, list):
        return [_without_empty_lists(v) for v in value]
    return value


def test_cli_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == crd.crd_yaml()


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "crds" / "agentsessions.yaml"
    assert cli.main(["crd", "--output", str(target), "--check"]) == 1
    assert cli.main(["crd", "--output", str(target)]) == 0
    assert cli.main(["crd", "--output", str(target), "--check"]) == 0
    target.write_text("stale", encoding="utf-8")
    assert cli.main(["crd", "-o", str(target), "--check"]) == 1


def test_unsupported_schema_is_refused() -> None:
    from pydantic import BaseModel

    class Loose(BaseModel):
        either: int | str

    with pytest.raises(crd.SchemaError, match="anyOf"):
        crd.openapi_schema(Loose)
