"""The egress gate (corral.runner.egress_gate): no CLI starts before the pod's egress is
filtered. Real sockets on loopback: a canary that answers while "no policy" is in force,
and that drops connections once it is (its accept queue full: Linux drops the SYN, just as
a NetworkPolicy agent's DROP rule does)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.runner import early_cli, egress_gate
from corral.runner.egress_gate import Canary, EgressGate, Prober, Try, wait_until_filtered
from corral.testing.loopback_canary import LoopbackCanary


@pytest.fixture
def canary() -> Iterator[LoopbackCanary]:
    served = LoopbackCanary()
    yield served
    served.close()


def _gate_before(canary: LoopbackCanary) -> EgressGate:
    """A started gate that tries `canary`."""
    return EgressGate(Canary("127.0.0.1", canary.port, max_wait=30, try_timeout=0.2)).start()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_no_canary_in_the_environment_means_no_gate() -> None:
    assert Canary.from_env({}) is None
    gate = EgressGate(Canary.from_env({})).start()
    assert gate.is_open() and gate.result is None


def test_the_canary_and_its_timings_come_from_the_environment() -> None:
    canary = Canary.from_env(
        {
            egress_gate.ENV_CANARY: "corral-gateway.corral-system.svc:8080",
            egress_gate.ENV_MAX_WAIT: "3",
            egress_gate.ENV_TRY_TIMEOUT: "0.2",
        }
    )
    assert canary == Canary("corral-gateway.corral-system.svc", 8080, 3.0, 0.2)
    assert Canary.from_env({egress_gate.ENV_CANARY: "[fd00::1]:8080"}) == Canary("fd00::1", 8080)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({egress_gate.ENV_CANARY: "corral-gateway"}, egress_gate.ENV_CANARY),
        ({egress_gate.ENV_CANARY: "gw:http"}, egress_gate.ENV_CANARY),
        ({egress_gate.ENV_CANARY: "gw:70000"}, egress_gate.ENV_CANARY),
        ({egress_gate.ENV_CANARY: "gw:1", egress_gate.ENV_MAX_WAIT: "soon"}, "MAX_WAIT"),
        ({egress_gate.ENV_CANARY: "gw:1", egress_gate.ENV_TRY_TIMEOUT: "0"}, "TRY_SECONDS"),
    ],
)
def test_a_malformed_canary_is_refused_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Canary.from_env(environ)


def test_one_try_tells_answered_dropped_refused_and_unresolved_apart(
    canary: LoopbackCanary,
) -> None:
    prober = Prober(Canary("localhost", canary.port, try_timeout=0.2))
    assert prober()[0] is Try.ANSWERED
    assert Prober(Canary("127.0.0.1", _closed_port()))()[0] is Try.REFUSED
    assert Prober(Canary("canary.invalid", 80))()[0] is Try.UNRESOLVED
    canary.drop()
    outcome, took = prober()
    assert outcome is Try.FILTERED and 0.2 <= took < 1


class Script:
    """Tries that come out as scripted, each taking `took` seconds of a fake clock."""

    def __init__(self, outcomes: list[Try], took: float = 0.001) -> None:
        self.outcomes = list(outcomes)
        self.took = took
        self.now = 0.0

    def attempt(self) -> tuple[Try, float]:
        self.now += self.took
        outcome = self.outcomes.pop(0) if self.outcomes else Try.ANSWERED
        return outcome, self.took

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _run(script: Script, max_wait: float = 5.0) -> egress_gate.GateResult:
    return wait_until_filtered(
        Canary("gw", 8080, max_wait=max_wait),
        attempt=script.attempt,
        clock=lambda: script.now,
        sleep=script.sleep,
    )


def test_the_gate_opens_at_the_first_filtered_try_and_counts_the_answered_ones() -> None:
    script = Script([Try.UNRESOLVED, Try.REFUSED, Try.ANSWERED, Try.ANSWERED, Try.FILTERED])
    result = _run(script)
    assert result.filtered
    assert (result.answered, result.refused, result.unresolved) == (2, 1, 1)
    assert result.waited == pytest.approx(5 * 0.001 + 4 * egress_gate.RETRY_PAUSE)


def test_a_refusal_after_an_answer_is_the_policy_rejecting() -> None:
    result = _run(Script([Try.REFUSED, Try.ANSWERED, Try.REFUSED, Try.ANSWERED]))
    assert result.filtered
    assert (result.answered, result.refused) == (1, 2)


@pytest.mark.parametrize("outcome", [Try.ANSWERED, Try.REFUSED, Try.UNRESOLVED])
def test_a_canary_never_filtered_opens_the_gate_unconfirmed_at_the_maximum_wait(
    outcome: Try,
) -> None:
    script = Script([outcome] * 10_000)
    result = _run(script, max_wait=2.0)
    assert not result.filtered
    assert 2.0 <= result.waited < 2.0 + egress_gate.RETRY_PAUSE + 0.01


def test_the_gate_holds_while_the_canary_answers_and_opens_once_it_is_dropped(
    canary: LoopbackCanary,
) -> None:
    gate = _gate_before(canary)
    time.sleep(0.5)
    assert not gate.is_open()  # egress still open: nothing may start
    assert canary.accepted >= 5
    canary.drop()
    assert gate.wait(5)
    assert gate.result is not None and gate.result.filtered
    assert gate.result.answered >= canary.accepted
    assert gate.result.waited >= 0.5 + 0.2


def test_a_gate_that_cannot_try_opens_unconfirmed_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_sockets(*args: object) -> socket.socket:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(egress_gate.socket, "socket", no_sockets)
    gate = EgressGate(Canary("127.0.0.1", 9, max_wait=30)).start()
    assert gate.wait(5)
    assert gate.result is not None and not gate.result.filtered
    assert gate.result.error is not None and "Too many open files" in gate.result.error


def test_agents_waiting_for_the_gate_share_one_thread(canary: LoopbackCanary) -> None:
    gate = _gate_before(canary)

    async def agents() -> int:
        waiters = [asyncio.create_task(gate.opened()) for _ in range(50)]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiters)
        threads_while_waiting = threading.active_count()
        canary.drop()
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return threads_while_waiting

    before = threading.active_count()  # the canary's and the gate's threads
    assert asyncio.run(agents()) <= before + 1


def _recorded_launch(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A record of the main agent's last CLI start in `state_dir`, and the session file.
    A stand-in program for the CLI: what matters is when it starts, not what it is."""
    program = "/bin/sleep"
    monkeypatch.setattr(early_cli, "bundled_cli", lambda: program)
    monkeypatch.setattr(early_cli, "worth_starting_early", lambda: True)
    launch = {"argv": [program, "30"], "cwd": str(state_dir), "set": {}, "unset": []}
    record = state_dir / early_cli.RECORD_FILE
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 1, "agents": {"main": launch}}))
    spec = state_dir / "session.json"
    spec.write_text(json.dumps({"pattern": "Hybrid"}))
    return spec


def test_the_gate_opens_when_an_answering_canary_starts_refusing(
    canary: LoopbackCanary,
) -> None:
    gate = _gate_before(canary)
    time.sleep(0.3)
    assert not gate.is_open()
    canary.close()  # a REJECT rule: the pod's tries are refused from now on
    assert gate.wait(5)
    assert gate.result is not None and gate.result.filtered and gate.result.refused == 1


def test_recorded_clis_start_only_once_the_gate_opens(
    tmp_path: Path, canary: LoopbackCanary, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _recorded_launch(tmp_path, monkeypatch)
    gate = _gate_before(canary)

    early = early_cli.launch_recorded(tmp_path, spec, gate)
    time.sleep(0.3)
    assert early.started == {}  # held behind the gate
    canary.drop()
    gate.wait()
    taken = early.take("main")
    assert taken is not None and taken.process.poll() is None
    taken.kill()


def test_a_discard_before_the_gate_opens_calls_the_early_start_off(
    tmp_path: Path, canary: LoopbackCanary, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _recorded_launch(tmp_path, monkeypatch)
    gate = _gate_before(canary)

    early = early_cli.launch_recorded(tmp_path, spec, gate)
    early.discard()
    canary.drop()
    gate.wait()
    assert early.take("main") is None


def test_nothing_left_behind_means_every_directory_empty_or_absent(tmp_path: Path) -> None:
    empty, absent, full = tmp_path / "empty", tmp_path / "absent", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    assert egress_gate.nothing_left_behind([empty, absent])
    assert egress_gate.nothing_left_behind([])
    # Anything counts: a hidden settings folder, a dangling link, a file in place of a dir.
    (full / ".claude").mkdir()
    assert not egress_gate.nothing_left_behind([empty, full])
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "gone").symlink_to(tmp_path / "nowhere")
    assert not egress_gate.nothing_left_behind([linked])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert not egress_gate.nothing_left_behind([a_file])
