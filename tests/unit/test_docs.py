"""The docs' tables of metrics, condition types and Event reasons name exactly what the code
defines: a metric, condition or Event reason added (or renamed) in the code without its row,
or a row left behind after a removal, fails here."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from corral.controller import conditions

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SOURCE = ROOT / "operator" / "corral"


# --- the docs' tables ---------------------------------------------------------------------


def tables(path: Path) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Each markdown table of `path`: its header cells and its rows' cells."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield header, rows
        else:
            i += 1


def _cells(line: str) -> list[str]:
    # `\|` inside a cell is an escaped pipe, not a column border.
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def first_column(path: Path, header: str) -> set[str]:
    """The backquoted names in the first column of the tables whose first header is
    `header` (text in parentheses, e.g. examples, is not a name)."""
    names: set[str] = set()
    found = False
    for head, rows in tables(path):
        if head[0].lower() != header.lower():
            continue
        found = True
        for row in rows:
            cell = re.sub(r"\([^)]*\)", "", row[0])
            names.update(re.findall(r"`([^`]+)`", cell))
    assert found, f"no table headed {header!r} in {path.name}"
    return names


def documented_metrics(path: Path) -> set[str]:
    return {re.sub(r"\{.*\}$", "", name) for name in first_column(path, "metric")}


# --- what the code defines ----------------------------------------------------------------


def exposed_names(collectors: Iterable[Collector]) -> set[str]:
    """Metric names as Prometheus sees them (a counter's family gets its `_total`)."""
    names = set()
    for collector in collectors:
        for family in collector.collect():
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def operator_metrics() -> set[str]:
    # Everything the operator process may import registers into the global registry.
    for package in ("corral.controller", "corral.kube"):
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__, package + "."):
            importlib.import_module(info.name)
    from corral.controller.metrics import SessionCollector

    names = exposed_names([REGISTRY, SessionCollector(lambda: [])])
    return {
        n
        for n in names
        if n.startswith("corral_") and not n.startswith(("corral_runner_", "corral_gateway_"))
    }


def condition_types() -> set[str]:
    return {
        value
        for name, value in vars(conditions).items()
        if name.isupper() and isinstance(value, str)
    }


class EventReasons:
    """Every Event reason the code can post, found in the source: the reason argument of
    each `.event(...)`, `EventNote(...)` and hand-made Event, resolved through literals,
    f-strings (`{kind}` becomes `<Kind>`), the literals assigned to a variable in the same
    function, the literals passed for a parameter at the call sites, and the constructors
    of `Refusal` and `Outcome`. An expression it cannot resolve is an error: teach it."""

    # The owner of a `.reason` attribute -> the class whose constructor sets it, and the
    # index of `reason` among its positional arguments.
    OWNERS: ClassVar[dict[str, tuple[str, int]]] = {
        "refused": ("Refusal", 0),
        "outcome": ("Outcome", 1),
    }

    def __init__(self, root: Path) -> None:
        self.modules = {p: ast.parse(p.read_text(encoding="utf-8")) for p in root.rglob("*.py")}
        self.unresolved: list[str] = []

    def all(self) -> set[str]:
        found: set[str] = set()
        for path, tree in self.modules.items():
            for func, call in self._calls(tree):
                reason = self._reason_argument(call)
                if reason is not None:
                    found |= self.resolve(reason, func, path)
            found |= self._hand_made_events(tree)
        return found

    @staticmethod
    def _calls(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef | None, ast.Call]]:
        def walk(node: ast.AST, func: ast.FunctionDef | None) -> Iterator[Any]:
            for child in ast.iter_child_nodes(node):
                inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
                if isinstance(child, ast.Call):
                    yield func, child
                yield from walk(child, inner)  # type: ignore[arg-type]

        yield from walk(tree, None)

    @staticmethod
    def _reason_argument(call: ast.Call) -> ast.expr | None:
        f = call.func
        # (`kopf.on.event(...)` is a decorator, not an Event.)
        if isinstance(f, ast.Attribute) and f.attr == "event" and call.args:
            if ast.unparse(f.value) == "kopf.on":
                return None
            return call.args[0]
        if isinstance(f, ast.Name) and f.id == "EventNote" and len(call.args) > 1:
            return call.args[1]
        if isinstance(f, ast.Name) and f.id == "event_manifest" and len(call.args) > 1:
            if ast.unparse(call.args[1]) == "note.reason":
                return None  # the reconciler posting an EventNote: found at EventNote(...)
            return call.args[1]
        return None

    @staticmethod
    def _hand_made_events(tree: ast.AST) -> set[str]:
        """`{"kind": "Event", ..., "reason": "X"}` dicts made by hand."""
        found = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            pairs = {
                k.value: v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant)
            }
            kind, reason = pairs.get("kind"), pairs.get("reason")
            if not (isinstance(kind, ast.Constant) and kind.value == "Event"):
                continue
            if isinstance(reason, ast.Name) and reason.id == "reason":
                continue  # corral.kube.events.event_manifest: found at its calls
            assert isinstance(reason, ast.Constant), ast.unparse(node)
            found.add(str(reason.value))
        return found

    def resolve(self, expr: ast.expr, func: ast.FunctionDef | None, path: Path) -> set[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            return self.resolve(expr.body, func, path) | self.resolve(expr.orelse, func, path)
        if isinstance(expr, ast.JoinedStr | ast.BinOp):
            return {self._pattern(expr)}
        if isinstance(expr, ast.Attribute) and expr.attr == "reason":
            owner = expr.value.id if isinstance(expr.value, ast.Name) else ""
            if owner in self.OWNERS:
                return self._constructed(*self.OWNERS[owner])
        if isinstance(expr, ast.Name) and func is not None:
            found = self._assigned(expr.id, func, path) | self._passed(expr.id, func, path)
            if found:
                return found
        self.unresolved.append(f"{path.name}: {ast.unparse(expr)}")
        return set()

    @staticmethod
    def _pattern(expr: ast.expr) -> str:
        """`f"Create{kind}Failed"` -> `Create<Kind>Failed`; `"Phase" + str(x.phase)` ->
        `Phase<Phase>`."""

        def part(node: ast.expr) -> str:
            if isinstance(node, ast.Constant):
                return str(node.value)
            if isinstance(node, ast.FormattedValue):
                return part(node.value)
            if isinstance(node, ast.JoinedStr):
                return "".join(part(v) for v in node.values)
            if isinstance(node, ast.BinOp):
                return part(node.left) + part(node.right)
            if isinstance(node, ast.Call) and node.args:
                return part(node.args[0])
            name = node.attr if isinstance(node, ast.Attribute) else ast.unparse(node)
            return f"<{name[:1].upper()}{name[1:]}>"

        return part(expr)

    def _assigned(self, name: str, func: ast.FunctionDef, path: Path) -> set[str]:
        """Literals assigned to `name` in `func`, except in a block that sets `warn` False
        (the reason is then not posted as an Event)."""
        found: set[str] = set()
        for block in (getattr(n, f, None) for n in ast.walk(func) for f in ("body", "orelse")):
            if not isinstance(block, list):
                continue
            quiet = any(_assigns_false(stmt, "warn") for stmt in block)
            for stmt in block:
                if not isinstance(stmt, ast.Assign):
                    continue
                value = _assigned_value(stmt, name)
                if value is None or quiet:
                    continue
                if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name):
                    found |= self._dict_values(value.value.id, path)
                elif isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.add(value.value)
        return found

    def _passed(self, name: str, func: ast.FunctionDef, path: Path) -> set[str]:
        """What the callers of `func` (in its module) pass for its parameter `name`."""
        params = [a.arg for a in func.args.args]
        if name not in params:
            return set()
        index = params.index(name) - (1 if params[:1] == ["self"] else 0)
        found: set[str] = set()
        for caller, call in self._calls(self.modules[path]):
            f = call.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if called == func.name and len(call.args) > index:
                found |= self.resolve(call.args[index], caller, path)
        return found

    def _constructed(self, cls: str, index: int) -> set[str]:
        """The reasons given to `cls(...)` anywhere (Outcome: failures only)."""
        found: set[str] = set()
        for path, tree in self.modules.items():
            for func, call in self._calls(tree):
                if not (isinstance(call.func, ast.Name) and call.func.id == cls):
                    continue
                first = call.args[0] if call.args else None
                if cls == "Outcome" and isinstance(first, ast.Constant) and first.value is True:
                    continue
                found |= self.resolve(call.args[index], func, path)
        return found

    def _dict_values(self, name: str, path: Path) -> set[str]:
        for node in ast.walk(self.modules[path]):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                return {str(v.value) for v in node.value.values if isinstance(v, ast.Constant)}
        return set()


def _assigned_value(stmt: ast.Assign, name: str) -> ast.expr | None:
    for target in stmt.targets:
        if isinstance(target, ast.Name) and target.id == name:
            return stmt.value
        if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple):
            for t, v in zip(target.elts, stmt.value.elts, strict=False):
                if isinstance(t, ast.Name) and t.id == name:
                    return v
    return None


def _assigns_false(stmt: ast.stmt, name: str) -> bool:
    if not isinstance(stmt, ast.Assign):
        return False
    value = _assigned_value(stmt, name)
    return isinstance(value, ast.Constant) and value.value is False


def event_reasons() -> set[str]:
    finder = EventReasons(SOURCE)
    found = finder.all()
    assert finder.unresolved == [], "Event reasons test_docs cannot resolve"
    return found


# --- the tests ----------------------------------------------------------------------------


def test_operator_metrics_table() -> None:
    assert documented_metrics(DOCS / "operations.md") == operator_metrics()


def test_runner_metrics_table() -> None:
    from corral.runner.metrics import RunnerMetrics

    code = exposed_names([RunnerMetrics().registry])
    assert documented_metrics(DOCS / "runner.md") == code


def test_gateway_metrics_table() -> None:
    from corral.gateway.egress import EgressMetrics
    from corral.gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    EgressMetrics(metrics.registry)  # the egress proxy's, in the same registry
    code = exposed_names([metrics.registry])
    assert documented_metrics(DOCS / "gateway.md") == code


def test_condition_types_table() -> None:
    assert first_column(DOCS / "operations.md", "condition") == condition_types()


def test_event_reasons_table() -> None:
    assert first_column(DOCS / "operations.md", "Event reason") == event_reasons()


def test_event_reason_finder_sees_every_kind_of_site() -> None:
    """The finder itself: literals, f-strings, `"Phase" + ...`, parameters, assignments
    (not those with warn False), Refusal/Outcome constructors and the gateway's Event."""
    found = event_reasons()
    assert "ScaledDown" in found  # a literal
    assert "Create<Kind>Failed" in found  # an EventNote f-string
    assert "<Kind>Restored" in found and "Phase<Phase>" in found
    assert {"PodRecreated", "PodResumed", "Woken"} <= found  # create_pod's callers
    assert {"SecretNotFound", "NoCredentials"} <= found  # Refusal
    assert {"OOMKilled", "AgentError", "RunnerFailed"} <= found  # Outcome, FAILED_SUBTYPES
    assert {"CrashLooping", "NameTaken", "StorageTooLarge"} <= found  # assigned
    assert "RunnerStarting" not in found and "PodPending" not in found  # warn False
    assert "WokenByRequest" in found  # the gateway's own Event


@pytest.mark.parametrize("doc", ["operations.md", "runner.md", "gateway.md"])
def test_a_missing_row_is_caught(doc: str, tmp_path: Path) -> None:
    """Dropping any one metric row makes the table differ from the code."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `corral_"))
    (tmp_path / doc).write_text(text.replace(row + "\n", ""), encoding="utf-8")
    assert documented_metrics(tmp_path / doc) < documented_metrics(DOCS / doc)
