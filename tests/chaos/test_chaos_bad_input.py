"""Bad input at scale: random and adversarial AgentSessions applied for a while through the
real API server while the operator runs (issue 16).

Manifests come from tests/bad_manifests.py (hypothesis), one example per apply, for
CORRAL_BAD_INPUT_SECONDS (default 60; set it to several minutes for a longer run). Some
examples (about a quarter) change an accepted session instead of making one; the oldest
reconciled sessions are deleted beyond MAX_LIVE. Reproducible: the seed is
printed (CORRAL_BAD_INPUT_SEED runs the same draws again; the number of rounds follows the
time given).

What must hold:
- every refusal by the API server names a field (the message carries a field path);
- every accepted session parses with the API models (else the operator cannot read it);
- the operator process stays alive and logs no traceback;
- every accepted session gets a status for its generation, or a False condition saying
  what is wrong (nothing wedged), and a canary made at the end reaches Running;
- the operator's RSS after the sessions are deleted stays within a generous bound.
Counts go to docs/benchmarks/bad-input.json.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chaos_support import REPO
from chaos_world import World
from hypothesis import HealthCheck, Phase, given, seed, settings
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from bad_manifests import Case, bad_manifests
from corral.api.v1alpha1 import AgentSession
from corral.testing.kube import wait_for
from corral.testing.load import GROUP, PLURAL, SMALL, VERSION, Load, phase_of

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# With fieldValidation=Warn the API server answers one Warning header per dropped unknown
# field, hundreds for a long list of objects; Python's http.client refuses more than 100
# headers (kubectl has no such limit), which would fail the request on the client's side.
http.client._MAXHEADERS = 100_000  # type: ignore[attr-defined]

SECONDS = float(os.environ.get("CORRAL_BAD_INPUT_SECONDS", "60"))
SEED = int(os.environ.get("CORRAL_BAD_INPUT_SEED") or random.randrange(2**32))
ROUND = 40  # examples per hypothesis run; a new run (seed + round) until the time is up
MAX_LIVE = 120  # accepted sessions kept at once: older reconciled ones are deleted
FIGURES = REPO / "docs" / "benchmarks" / "bad-input.json"
# A field path in a message: spec.x, spec.agents[0].name, metadata.name, or a quoted one
# (`unknown field "spec.foo"`).
FIELD_PATH = re.compile(r'(\b(spec|metadata)(\.[A-Za-z_$][\w$-]*|\[\d+\])+|unknown field "[^"]+")')


@pytest.fixture
def chaos_load() -> Load:
    return Load.mixed(0)  # no standing load: the sessions are the generated ones


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class RssSampler:
    """The operator's resident memory, sampled every half second."""

    pid: int
    peak: int = 0
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (s, MiB) every 10 s
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                now = rss_bytes(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, now)
            elapsed = time.monotonic() - started
            if not self.timeline or elapsed - self.timeline[-1][0] >= 10:
                self.timeline.append((round(elapsed), round(now / (1 << 20), 1)))

    def __exit__(self, *_: object) -> None:
        self._stop.set()


def shortened(message: str, keep: int = 200) -> str:
    """Head and tail of a long message (a refused patch quotes the whole object first)."""
    if len(message) <= 2 * keep:
        return message
    return f"{message[:keep]} […] {message[-keep:]}"


def normalized(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def rejection_key(status: int, body: dict[str, Any]) -> list[str]:
    """`reason field` per cause of a refusal (indices folded), else the status reason. The
    cause the API server adds when it skipped the CEL rules (field `<nil>`, "some
    validation rules were not checked") goes with the others, not counted alone."""
    causes = (body.get("details") or {}).get("causes") or []
    keys = [
        f"{c.get('reason', '?')} {normalized(str(c.get('field') or '-'))}"
        for c in causes
        if isinstance(c, dict) and c.get("field") != "<nil>"
    ]
    return keys or [f"{status} {body.get('reason', '?')}"]


def names_a_field(body: dict[str, Any]) -> bool:
    causes = (body.get("details") or {}).get("causes") or []
    if any(isinstance(c, dict) and c.get("field") for c in causes):
        return True
    return bool(FIELD_PATH.search(str(body.get("message", ""))))


def reconciled(session: dict[str, Any]) -> bool:
    """Acted on for its current generation, or a condition says what is wrong with it."""
    generation = session["metadata"].get("generation")
    status = session.get("status") or {}
    if status.get("observedGeneration") == generation:
        return True
    return any(
        c.get("status") == "False" and c.get("observedGeneration") == generation
        for c in status.get("conditions") or []
    )


@dataclass
class Tally:
    world: World
    applied: int = 0
    created: int = 0
    updates: int = 0
    already_exists: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # a message per rejection key
    rejected_calls: int = 0
    rejected_by_flaw: Counter[str] = field(default_factory=Counter)
    accepted_by_flaw: Counter[str] = field(default_factory=Counter)
    accepted_by_pattern: Counter[str] = field(default_factory=Counter)
    unnamed: list[str] = field(default_factory=list)
    unparseable: list[str] = field(default_factory=list)
    valid_refused: list[str] = field(default_factory=list)  # unbroken manifests refused
    other_errors: list[str] = field(default_factory=list)
    live: dict[str, float] = field(default_factory=dict)  # accepted, not deleted: when
    patterns: dict[str, str] = field(default_factory=dict)  # of the accepted sessions
    pending: set[str] = field(default_factory=set)  # accepted or changed, not reconciled yet
    reconciled: int = 0  # creates and changes seen reconciled
    sessions_reconciled: set[str] = field(default_factory=set)
    deleted: int = 0
    counter: int = 0

    def apply(self, case: Case) -> None:
        custom = self.world.custom
        namespace = self.world.namespace
        body = case.manifest
        validation = "Strict" if case.strict else "Warn"
        targets = sorted(self.live)
        case.update = case.update and bool(targets)
        try:
            if case.update and targets:
                # Spread: hypothesis favours small numbers, which would all pick the first.
                name = targets[(case.target * 2_654_435_761) % len(targets)]
                spec = body.get("spec")
                if isinstance(spec, dict) and "conflict" not in case.flaws:
                    spec["pattern"] = self.patterns.get(name)  # immutable: keep it
                result = custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, {"spec": body.get("spec")},
                    field_validation=validation,
                )  # fmt: skip
                self.updates += 1
            else:
                if not case.named_badly:
                    self.counter += 1
                    body["metadata"]["name"] = f"bad-{self.counter:05d}"
                result = custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, body, field_validation=validation
                )
                self.created += 1
        except ApiException as error:
            self.applied += 1
            self.refused(case, error)
            return
        self.applied += 1
        name = result["metadata"]["name"]
        self.live.setdefault(name, time.monotonic())
        self.patterns[name] = str((result.get("spec") or {}).get("pattern"))
        self.pending.add(name)
        self.accepted_by_pattern[self.patterns[name]] += 1
        for flaw in flaws_of(case):
            self.accepted_by_flaw[flaw] += 1
        try:
            AgentSession.model_validate(result)
        except ValidationError as error:
            self.unparseable.append(f"{case.flaws}: {str(error)[:300]}: {json.dumps(body)[:300]}")
        if self.applied % 25 == 0:
            self.sweep()

    def refused(self, case: Case, error: ApiException) -> None:
        try:
            body = json.loads(error.body or "{}")
        except ValueError:
            body = {"message": str(error.body)}
        if error.status == 409 and body.get("reason") == "AlreadyExists":
            self.already_exists += 1
            return
        if error.status not in (400, 422):
            self.other_errors.append(f"{error.status}: {str(body.get('message'))[:300]}")
            return
        self.rejected_calls += 1
        for key in rejection_key(error.status, body):
            self.rejected[key] += 1
            self.examples.setdefault(key, shortened(str(body.get("message"))))
        for flaw in flaws_of(case):
            self.rejected_by_flaw[flaw] += 1
        if set(case.flaws) == {"valid"} and not case.update:
            self.valid_refused.append(str(body.get("message"))[:400])
        if not names_a_field(body):
            self.unnamed.append(f"{case.flaws}: {str(body.get('message'))[:400]}")

    def sweep(self, keep: int = MAX_LIVE) -> None:
        """Count the sessions reconciled since the last sweep; delete the oldest reconciled
        ones beyond `keep`."""
        listed = self.world.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.world.namespace, PLURAL
        )["items"]
        done = [s["metadata"]["name"] for s in listed if reconciled(s)]
        for name in done:
            if name in self.pending:
                self.pending.discard(name)
                self.reconciled += 1
                self.sessions_reconciled.add(name)
        excess = len(self.live) - keep
        for name in sorted((n for n in done if n in self.live), key=self.live.__getitem__):
            if excess <= 0:
                break
            self.delete(name)
            excess -= 1

    def delete(self, name: str) -> None:
        try:
            self.world.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.world.namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status != 404:
                raise
        self.live.pop(name, None)
        self.pending.discard(name)
        self.deleted += 1


def flaws_of(case: Case) -> set[str]:
    return {f"update: {flaw}" if case.update else flaw for flaw in case.flaws}


def apply_for(tally: Tally, seconds: float, base_seed: int) -> int:
    """Hypothesis runs of ROUND examples each, seeded base_seed + n, until `seconds` pass."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:

        @seed(base_seed + rounds)
        @settings(
            max_examples=ROUND,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=bad_manifests(tally.world.namespace))
        def apply_one(case: Case) -> None:
            if time.monotonic() < deadline:
                tally.apply(case)

        apply_one()
        rounds += 1
    return rounds


def log_problems(path: Path) -> tuple[list[str], Counter[str]]:
    """Tracebacks in the operator's log, and its lines per level."""
    tracebacks: list[str] = []
    levels: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                tracebacks.append(line)
            continue
        levels[str(record.get("level"))] += 1
        if "exception" in record or "Traceback" in str(record.get("msg", "")):
            tracebacks.append(line[:600])
    return tracebacks, levels


def test_bad_input_at_scale(world: World) -> None:
    print(f"bad input: seed {SEED} (CORRAL_BAD_INPUT_SEED={SEED} repeats it), {SECONDS:.0f}s")
    started = time.monotonic()
    operator = world.operator("chaos-bad-input")
    operator.wait_leader()
    assert operator.proc is not None
    pid = operator.proc.pid
    time.sleep(2)
    rss_start = rss_bytes(pid)
    tally = Tally(world)
    with RssSampler(pid) as sampler:
        rounds = apply_for(tally, SECONDS, SEED)
        applying = time.monotonic() - started

        # Nothing wedged: every accepted session is acted on (generous: a loaded machine).
        def all_reconciled() -> bool:
            tally.sweep()
            return not tally.pending

        with contextlib.suppress(TimeoutError):  # the ones left are reported as wedged
            wait_for(all_reconciled, timeout=180, interval=2, what="every accepted session")
        wedged = sorted(tally.pending)
        canary = "canary"
        world.custom.create_namespaced_custom_object(
            GROUP, VERSION, world.namespace, PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentSession",
             "metadata": {"name": canary}, "spec": {"pattern": "LongRunning", "resources": SMALL}},
        )  # fmt: skip
        made = time.monotonic()

        def canary_running() -> bool:
            found = world.custom.get_namespaced_custom_object(
                GROUP, VERSION, world.namespace, PLURAL, canary
            )
            return phase_of(found) == "Running"

        wait_for(canary_running, timeout=180, interval=1, what="the canary session Running")
        canary_seconds = time.monotonic() - made
        peak_loaded = sampler.peak
        rss_loaded = rss_bytes(pid)
        live_at_end = len(tally.live)
        for name in [*sorted(tally.live), canary]:
            tally.delete(name)
        wait_for(
            lambda: (
                not world.custom.list_namespaced_custom_object(
                    GROUP, VERSION, world.namespace, PLURAL
                )["items"]
            ),
            timeout=120,
            what="every session deleted",
        )
        time.sleep(5)  # the operator forgets deleted sessions and their children
        rss_end = rss_bytes(pid)
        peak = sampler.peak
    alive = operator.proc.poll() is None
    tracebacks, levels = log_problems(operator.log_path)
    mib = 1 << 20
    figures = {
        "seed": SEED,
        "seconds_applying": round(applying, 1),
        "hypothesis_rounds": rounds,
        "applied": tally.applied,
        "creates": tally.created,
        "updates_of_accepted_sessions": tally.updates,
        "accepted": tally.applied
        - tally.rejected_calls
        - tally.already_exists
        - len(tally.other_errors),
        "accepted_by_pattern": dict(tally.accepted_by_pattern),
        "accepted_by_flaw": dict(tally.accepted_by_flaw),
        "rejected_by_api_server": tally.rejected_calls,
        "rejected_by_flaw": dict(tally.rejected_by_flaw),
        "rejections_per_reason_and_field": dict(tally.rejected.most_common()),
        "rejection_messages": tally.examples,
        "rejections_naming_no_field": len(tally.unnamed),
        "already_exists_409": tally.already_exists,
        "other_api_errors": len(tally.other_errors),
        "accepted_but_unparseable_by_the_models": len(tally.unparseable),
        "valid_manifests_refused": len(tally.valid_refused),
        "sessions_created": tally.created,
        "sessions_reconciled": len(tally.sessions_reconciled),
        "creates_and_changes_seen_reconciled": tally.reconciled,
        "wedged": len(wedged),
        "sessions_deleted_by_the_test": tally.deleted,
        "sessions_live_at_end": live_at_end,
        "canary_running_after_seconds": round(canary_seconds, 1),
        "operator_alive": alive,
        "crashes": 0 if alive else 1,
        "operator_tracebacks": len(tracebacks),
        "operator_log_lines_per_level": dict(levels),
        "operator_rss_mib": {
            "start": round(rss_start / mib, 1),
            "loaded_at_end": round(rss_loaded / mib, 1),
            "peak": round(max(peak, peak_loaded) / mib, 1),
            "after_deleting_everything": round(rss_end / mib, 1),
            "every_10s": sampler.timeline,
        },
        "test_seconds": round(time.monotonic() - started, 1),
    }
    record(figures)
    assert alive, f"the operator exited; log:\n{operator.log_tail()}"
    assert not tracebacks, "tracebacks in the operator's log:\n" + "\n".join(tracebacks[:5])
    assert not tally.unnamed, "refusals naming no field:\n" + "\n".join(tally.unnamed[:10])
    assert not tally.unparseable, "accepted, but the models refuse:\n" + "\n".join(
        tally.unparseable[:5]
    )
    assert not tally.valid_refused, "valid manifests refused:\n" + "\n".join(
        tally.valid_refused[:5]
    )
    assert not tally.other_errors, "unexpected API errors:\n" + "\n".join(tally.other_errors[:5])
    assert not wedged, f"{len(wedged)} accepted sessions never reconciled, e.g. {wedged[:5]}"
    assert tally.rejected_calls > 0 and tally.reconciled > 0  # both sides were exercised
    # Generous: what the operator holds for deleted sessions must be given back, mostly.
    assert rss_end <= max(2 * rss_start, rss_start + 200 * mib), figures["operator_rss_mib"]


def record(figures: dict[str, Any]) -> None:
    data = {
        **figures,
        "measured": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; shared with other test runs",
        "written_by": "tests/chaos/test_chaos_bad_input.py",
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"bad input: {json.dumps(figures, sort_keys=True)}")
