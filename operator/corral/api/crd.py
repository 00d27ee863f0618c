"""The AgentSession CustomResourceDefinition, generated from the pydantic models.

pydantic writes JSON Schema (2020-12 flavour, with `$ref`s and `anyOf: [X, null]` for
optional fields); the API server wants a structural OpenAPI v3 schema. The transformation
below inlines every reference, turns optionals into plain types, converts numeric
exclusive bounds, and refuses any keyword it does not know, so a model change that the
API server would not accept fails here and not at `kubectl apply`.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from corral.api import guardrails
from corral.api import v1alpha1 as api

Schema = dict[str, Any]

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
GUARDRAIL_CRD_NAME = f"{guardrails.PLURAL}.{api.GROUP}"
HEADER = "# Generated from corral.api.v1alpha1 by `corral crd`: do not edit by hand.\n"

# The keywords a schema may carry, in the order they are written out.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "maxProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "items",
    "additionalProperties",
    "required",
    "properties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
_RULE_KEY_ORDER = ("rule", "message", "messageExpression", "fieldPath", "reason")
# pydantic noise that has no place in a CRD.
_DROPPED = ("title", "$defs")


class SchemaError(ValueError):
    """The models produced a schema the API server would not accept."""


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of one model, descriptions and CEL rules included."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    return _structural(raw, defs, path=model.__name__)


def _inline(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    """Resolve `$ref`, `allOf: [one]` and `anyOf: [X, null]`; the outer keys win."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        return _inline({**target, **node}, defs, path)
    for combinator in ("anyOf", "allOf"):
        if combinator in node:
            branches = [b for b in node.pop(combinator) if b.get("type") != "null"]
            if len(branches) != 1:
                raise SchemaError(f"{path}: {combinator} with {len(branches)} non-null branches")
            return _inline({**_inline(branches[0], defs, path), **node}, defs, path)
    return node


def _structural(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    node = _inline(node, defs, path)
    for key in _DROPPED:
        node.pop(key, None)
    if node.get("default", ...) is None:
        del node["default"]  # "absent" in Kubernetes, not a value
    if node.get("default") == {} and "properties" in node:
        # An empty object default is expanded with its fields' defaults, so that CEL rules
        # checked against the default (at CRD creation) see every defaulted field.
        node["default"] = _nested_defaults(_inline(node, defs, path), defs, path)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # pruning already drops unknown fields
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[plain], node[bound] = node[bound], True  # OpenAPI v3.0 spelling
    if "properties" in node:
        node["properties"] = {
            name: _structural(child, defs, f"{path}.{name}")
            for name, child in node["properties"].items()
        }
    if "items" in node:
        node["items"] = _structural(node["items"], defs, f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(
            node["additionalProperties"], defs, f"{path}{{}}"
        )
    if "x-kubernetes-validations" in node:
        node["x-kubernetes-validations"] = [
            {k: rule[k] for k in _RULE_KEY_ORDER if k in rule}
            for rule in node["x-kubernetes-validations"]
        ]
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:
        raise SchemaError(f"{path}: keywords a CRD schema cannot carry: {sorted(unknown)}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: no type (a structural schema needs one everywhere)")
    return {key: node[key] for key in _KEY_ORDER if key in node}


def _nested_defaults(node: Schema, defs: dict[str, Schema], path: str) -> dict[str, Any]:
    filled: dict[str, Any] = {}
    for name, child in node.get("properties", {}).items():
        child = _inline(child, defs, f"{path}.{name}")
        default = child.get("default")
        if default == {} and "properties" in child:
            default = _nested_defaults(child, defs, f"{path}.{name}")
        if default is not None:
            filled[name] = default
    return filled


def _field(type_: str, description: str) -> Schema:
    return {"description": description, "type": type_}


def root_schema() -> Schema:
    """The schema of the whole object: standard type fields, spec and status."""
    return {
        "description": "AgentSession hosts a Claude Agent SDK session in a hardened pod: "
        "an Ephemeral task, a LongRunning or Hybrid conversation, or Shared agents.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": _field("string", "Versioned schema of this representation of an object."),
            "kind": _field("string", "REST resource this object represents."),
            # The API server owns metadata's schema; a CRD may only say it is an object.
            "metadata": {"type": "object"},
            "spec": openapi_schema(api.AgentSessionSpec),
            "status": openapi_schema(api.AgentSessionStatus),
        },
    }


def _column(
    name: str, type_: str, json_path: str, description: str, priority: int = 0
) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": type_,
        "jsonPath": json_path,
        "description": description,
    }
    if priority:
        column["priority"] = priority  # shown by `kubectl get -o wide` only
    return column


# The Ready condition, as a JSONPath printer columns can read.
_READY = '.status.conditions[?(@.type=="Ready")]'

PRINTER_COLUMNS = [
    _column("Pattern", "string", ".spec.pattern", "Hosting pattern."),
    _column("Phase", "string", ".status.phase", "Where the session is."),
    _column("Ready", "string", _READY + ".status", "Whether the runner accepts messages."),
    _column("Reason", "string", _READY + ".reason", "Why it is (not) ready."),
    _column("Turns", "integer", ".status.numTurns", "Turns taken so far."),
    _column("Cost", "number", ".status.totalCostUsd", "Token cost so far in USD (estimate)."),
    _column("Last Activity", "date", ".status.lastActivityTime", "Last turn or message."),
    _column("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
    _column("Pod", "string", ".status.podName", "Current pod.", priority=1),
    _column("Endpoint", "string", ".status.endpoint", "Runner URL in the cluster.", priority=1),
    _column(
        "Metered Cost",
        "number",
        ".status.modelUsage.costUsd",
        "Model cost in USD as the gateway's model proxy metered it (outside the sandbox).",
        priority=1,
    ),
    _column(
        "Background Tasks",
        "integer",
        ".status.backgroundTasks",
        "Background tasks the agents started that still run.",
        priority=1,
    ),
    _column(
        "Next Durable Task",
        "string",  # a date column shows a time to come as <invalid>
        ".status.nextDurableWakeupTime",
        "When an agent's CLI runs its next durable task (a sleeping Hybrid session wakes ahead).",
        priority=1,
    ),
]


def custom_resource_definition() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of AgentSession."""
    version = {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root_schema()},
        "subresources": {"status": {}},
        "additionalPrinterColumns": PRINTER_COLUMNS,
        # `kubectl get ags --field-selector spec.pattern=Hybrid`
        "selectableFields": [{"jsonPath": ".spec.pattern"}],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "corral", "app.kubernetes.io/part-of": "corral"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def guardrail_resource_definition() -> dict[str, Any]:
    """The CustomResourceDefinition of SessionGuardrail (corral.api.guardrails)."""
    root = {
        "description": "SessionGuardrail limits what the AgentSessions of its namespace may "
        "ask for; the chart's ValidatingAdmissionPolicy enforces it (docs/guardrails.md).",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": _field("string", "Versioned schema of this representation of an object."),
            "kind": _field("string", "REST resource this object represents."),
            "metadata": {"type": "object"},
            "spec": openapi_schema(guardrails.SessionGuardrailSpec),
        },
    }
    version = {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": GUARDRAIL_CRD_NAME,
            "labels": {"app.kubernetes.io/name": "corral", "app.kubernetes.io/part-of": "corral"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": guardrails.KIND,
                "listKind": f"{guardrails.KIND}List",
                "plural": guardrails.PLURAL,
                "singular": guardrails.SINGULAR,
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def _dump(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False, width=100, allow_unicode=True)


def crd_yaml() -> str:
    """The CRD as the YAML committed in crds/ (stable output: the drift test compares text)."""
    return HEADER + _dump(custom_resource_definition())


def guardrail_crd_yaml() -> str:
    """The SessionGuardrail CRD as committed in crds/sessionguardrails.yaml."""
    header = HEADER.replace("v1alpha1", "guardrails").replace(
        "`corral crd`", "`corral crd --guardrails`"
    )
    return header + _dump(guardrail_resource_definition())
