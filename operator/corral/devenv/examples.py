"""The example sessions of `corral up`: loaded from examples/, fitted to the local node,
and judged ready (pure functions; corral.dev applies them and polls)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FILES = ("ephemeral.yaml", "long-running.yaml", "hybrid.yaml", "shared.yaml")
# What one session gets on the local real node (a laptop or a 2-core VM): the examples ask
# for production sizes (4.5 CPUs in all), which would leave them Unschedulable there.
SMALL = {"cpu": "250m", "memory": "768Mi", "disk": "1Gi"}
# Shared runs one CLI process per agent (about 230Mi each).
SMALL_SHARED = {"cpu": "250m", "memory": "1Gi", "disk": "1Gi"}


def load(directory: Path) -> list[dict[str, Any]]:
    docs = []
    for name in FILES:
        docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    return docs


def fit_to_real_node(doc: dict[str, Any]) -> dict[str, Any]:
    """The example as the local real node runs it: small resources (they ask for more CPU
    than the node has). The model needs no egress rule: the gateway's model proxy is
    reached as the gateway, which every session's NetworkPolicy allows."""
    fitted = copy.deepcopy(doc)
    spec = fitted["spec"]
    spec["resources"] = dict(SMALL_SHARED if spec.get("pattern") == "Shared" else SMALL)
    return fitted


@dataclass(frozen=True)
class Verdict:
    name: str
    ready: bool
    state: str  # one short line: phase, turns, what it waits for
    failed: bool = False  # will not get there: stop waiting


def judge(session: dict[str, Any]) -> Verdict:
    """Is an example where it should be? Ephemeral: Succeeded with a result; the others:
    Running with at least one turn taken (their prompt answered)."""
    name = session["metadata"]["name"]
    pattern = session.get("spec", {}).get("pattern")
    status = session.get("status") or {}
    phase = status.get("phase") or "New"
    turns = status.get("numTurns") or 0
    if pattern == "Ephemeral":
        result = status.get("result") or {}
        if phase == "Succeeded" and result:
            return Verdict(name, True, f"Succeeded ({result.get('subtype')}), {turns} turns")
        if phase == "Failed":
            return Verdict(name, False, f"Failed: {_reason(status)}", failed=True)
        return Verdict(name, False, f"{phase}, waiting for its result")
    if phase == "Running" and turns > 0:
        return Verdict(name, True, f"Running, {turns} turns")
    if phase == "Failed":
        return Verdict(name, False, f"Failed: {_reason(status)}", failed=True)
    return Verdict(name, False, f"{phase}, waiting for its first turn")


def judge_kwok(session: dict[str, Any]) -> Verdict:
    """On KWOK nodes nothing runs: an example is as far as it gets once it has its pod (a
    Hybrid one may already be Idle again: scaled to zero after its idle timeout)."""
    name = session["metadata"]["name"]
    status = session.get("status") or {}
    phase = status.get("phase") or "New"
    idle = phase == "Idle" and session.get("spec", {}).get("pattern") == "Hybrid"
    ready = idle or (phase in ("Running", "Pending") and bool(status.get("podName")))
    return Verdict(name, ready, f"{phase}, pod {status.get('podName') or '-'}")


def _reason(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True" and condition.get("message"):
            return str(condition["message"])[:200]
    return "see kubectl describe"
