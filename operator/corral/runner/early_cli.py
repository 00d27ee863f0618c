"""Each agent's CLI started first, as the last start of this session's runner started it.

A runner's start is two pieces of work of about 0.3 CPU-seconds each: its own (Python,
pydantic and the API models, the SDK, the spec validated, the CLI's options built) and the
CLI's boot. The CLI's command line comes out of the first, so they ran one after the
other. A pod with two CPUs at start (the start-up CPU boost gives a 1-CPU session 2) can
run them side by side: `launch_recorded` starts each CLI from a record of its previous
start, kept on the state volume, before any of those imports; when the SDK then goes to
start that agent's CLI, `SpawnOffer.open` gives it the running process if, and only if,
it was started with exactly the command line, environment and working directory the SDK
asks for now. Otherwise that process is killed and the SDK starts its own, as without a
record. A Hybrid session keeps its state volume, so its wakes start this way. Like every
CLI start, it waits for the egress gate (corral.runner.egress_gate): a thread starts the
recorded CLIs once the pod's NetworkPolicy is seen in force.

The record is on a volume the agent can write, so it is a hint, never trusted: read
bounded, validated, and its program must be the SDK's bundled CLI; its environment may
only set or unset `CLAUDE*` variables and `PWD` (never, say, `LD_PRELOAD`). What such a
process could do before it is killed (it gets no message) is no more than the agent, who
wrote the record, can do itself. The record holds no secret: the environment is kept as
the difference from the runner's own (the SDK's additions), which holds none.

This module must stay light: it runs before the runner's heavy imports.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import subprocess
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.runner.bounded_file import read_bounded, replace_file
from corral.runner.egress_gate import OPEN, EgressGate

# The runner's own files in the state dir (saved sessions, this record).
RUNNER_SUBDIR = "runner"
RECORD_FILE = Path(RUNNER_SUBDIR) / "cli-launch.json"
# The agent of every pattern but Shared (corral.runner.layout, which imports the API models).
MAIN_AGENT = "main"
MAX_RECORD_BYTES = 1024 * 1024
MAX_AGENTS = 64
RECORD_VERSION = 1
# What a recorded environment may set or unset.
# Below this many CPUs the runner and its CLI take turns rather than run side by side.
MIN_CPUS = 1.5
ALLOWED_VARIABLE = re.compile(r"^(CLAUDE[A-Z0-9_]{0,100}|PWD)$")


@dataclass(frozen=True)
class Launch:
    """A CLI's start: its command line, its working directory, and its environment as
    the variables set and unset on top of the runner's own."""

    argv: tuple[str, ...]
    cwd: str
    set: Mapping[str, str]
    unset: frozenset[str]

    @classmethod
    def of(
        cls, argv: list[str], env: Mapping[str, str], cwd: str, base: Mapping[str, str]
    ) -> Launch:
        return cls(
            argv=tuple(argv),
            cwd=cwd,
            set={key: value for key, value in env.items() if base.get(key) != value},
            unset=frozenset(key for key in base if key not in env),
        )

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**{k: v for k, v in base.items() if k not in self.unset}, **self.set}

    def recordable(self) -> bool:
        return all(ALLOWED_VARIABLE.match(key) for key in (*self.set, *self.unset))

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "cwd": self.cwd,
            "set": dict(self.set),
            "unset": sorted(self.unset),
        }

    @classmethod
    def from_json(cls, data: object, cli: str) -> Launch:
        """ValueError naming what is wrong with a recorded launch."""
        if not isinstance(data, dict) or set(data) != {"argv", "cwd", "set", "unset"}:
            raise ValueError("a launch must have exactly argv, cwd, set and unset")
        argv, cwd, env_set, unset = data["argv"], data["cwd"], data["set"], data["unset"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a non-empty list of strings")
        if argv[0] != cli:
            raise ValueError("argv[0] is not the SDK's bundled CLI")
        if not (isinstance(cwd, str) and os.path.isabs(cwd)):
            raise ValueError("cwd must be an absolute path")
        if not (
            isinstance(env_set, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env_set.items())
        ):
            raise ValueError("set must map strings to strings")
        if not (isinstance(unset, list) and all(isinstance(k, str) for k in unset)):
            raise ValueError("unset must be a list of strings")
        launch = cls(tuple(argv), cwd, dict(env_set), frozenset(unset))
        if not launch.recordable():
            raise ValueError("the environment may only set or unset CLAUDE* and PWD")
        return launch


@functools.cache
def bundled_cli() -> str | None:
    """Where the SDK's bundled CLI is, found without importing the SDK (once)."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "_bundled", "claude")


def read_record(path: Path, cli: str) -> dict[str, Launch]:
    """Each agent's recorded launch; ValueError when the file is unusable."""
    data = read_bounded(path, MAX_RECORD_BYTES)
    if data is None:
        return {}
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("version") != RECORD_VERSION:
        raise ValueError(f"not a version-{RECORD_VERSION} record")
    agents = body.get("agents")
    if not isinstance(agents, dict) or len(agents) > MAX_AGENTS:
        raise ValueError(f"agents must map at most {MAX_AGENTS} names to launches")
    launches = {}
    for name, launch in agents.items():
        try:
            launches[str(name)] = Launch.from_json(launch, cli)
        except ValueError as exc:
            raise ValueError(f"agents.{name}: {exc}") from None
    return launches


@dataclass
class EarlyCli:
    """A CLI started from the record, not yet given to the SDK."""

    launch: Launch
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()


@dataclass
class EarlyClis:
    """What `launch_recorded` started, by agent, and what to log about it once logging is
    set up (this runs before). Behind an egress gate that is not open yet, the starts
    happen in a thread once it opens: `take` and `discard` wait for them (a discard
    first calls them off)."""

    record: Path
    started: dict[str, EarlyCli] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Every agent whose CLI was started early, taken or not (for the log).
    agents: list[str] = field(default_factory=list)
    _launching: threading.Thread | None = None
    _called_off: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, agent: str) -> EarlyCli | None:
        """`agent`'s early CLI: only once the egress gate is open (or it would wait)."""
        if self._launching is not None:
            self._launching.join()
        return self.started.pop(agent, None)

    def discard(self) -> None:
        """Kill what no agent took (an agent since removed from the spec), and start
        nothing more."""
        with self._lock:
            self._called_off = True
        while self.started:
            _, early = self.started.popitem()
            early.kill()

    def remember(self, agent: str, launch: Launch) -> None:
        """Record `launch` as `agent`'s next start (one that cannot be recorded: forget
        the agent's). Never raises: the record only saves time."""
        try:
            cli = bundled_cli()
            try:
                launches = read_record(self.record, cli) if cli else {}
            except (ValueError, RecursionError):
                launches = {}
            if not launch.recordable() or launch.argv[0] != cli:
                if launches.pop(agent, None) is None:
                    return
            else:
                launches[agent] = launch
            body = {
                "version": RECORD_VERSION,
                "agents": {name: item.to_json() for name, item in launches.items()},
            }
            replace_file(self.record, json.dumps(body).encode(), durable=False)
        except OSError as exc:
            self.notes.append(f"cannot record the CLI's launch: {exc}")


def cpu_limit() -> float | None:
    """The CPUs this process may use: its cgroup's CPU quota (v1 or v2), None when
    unlimited or unknown."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            for controller in controllers.split(",") or [""]:
                groups[controller] = group.lstrip("/")
    root = Path("/sys/fs/cgroup")
    # The group's own file where it is mounted at its host path, else the mount's root
    # (in a container, the container's group).
    for directory in (root / groups.get("", ""), root):
        with contextlib.suppress(OSError, ValueError):
            quota, period = (directory / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
    for directory in (root / "cpu" / groups.get("cpu", ""), root / "cpu"):
        with contextlib.suppress(OSError, ValueError):
            quota_us = int((directory / "cpu.cfs_quota_us").read_text())
            period_us = int((directory / "cpu.cfs_period_us").read_text())
            return None if quota_us < 0 else quota_us / period_us
    return None


def worth_starting_early() -> bool:
    """Whether the CLI can boot beside the runner's own start: more than one CPU (the
    start-up CPU boost gives a small session 2). On one CPU the two would only take
    turns, and the early start would cost a little more than it saves."""
    limit = cpu_limit()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return min(usable, limit if limit is not None else usable) >= MIN_CPUS


def spec_agents(spec_file: Path) -> set[str]:
    """The agents the session file (written by the operator, not the agent) names, read
    without the API models: a Shared session's agents, else the one main agent (as
    corral.runner.layout lays them out). Empty for a file this cannot read as JSON."""
    try:
        body = json.loads(read_bounded(spec_file, MAX_RECORD_BYTES) or b"null")
    except (OSError, ValueError, RecursionError):
        return set()
    if isinstance(body, dict) and isinstance(body.get("spec"), dict):
        body = body["spec"]  # a manifest
    if not isinstance(body, dict):
        return set()
    agents = body.get("agents")
    if body.get("pattern") == "Shared" and isinstance(agents, list) and agents:
        return {str(a.get("name")) for a in agents if isinstance(a, dict)}
    return {MAIN_AGENT}


def launch_recorded(state_dir: Path, spec_file: Path, gate: EgressGate = OPEN) -> EarlyClis:
    """Start the recorded CLI of every agent the session file names, pipes open for the
    SDK to take over: now, or as soon as the egress gate opens. Only those: a record with
    more agents (it is on the agent's volume) must not start more CLIs than the session
    runs anyway."""
    early = EarlyClis(state_dir / RECORD_FILE)
    cli = bundled_cli()
    if cli is None or not worth_starting_early():
        return early
    try:
        launches = read_record(early.record, cli)
    except (OSError, ValueError, RecursionError) as exc:
        early.notes.append(f"ignoring the CLI launch record: {str(exc)[:300]}")
        return early
    agents = spec_agents(spec_file)
    wanted = {agent: launch for agent, launch in launches.items() if agent in agents}
    if gate.is_open():
        _launch(early, wanted)
    elif wanted:

        def launch_when_open() -> None:
            gate.wait()
            with early._lock:
                if not early._called_off:
                    _launch(early, wanted)

        early._launching = threading.Thread(target=launch_when_open, name="early-cli", daemon=True)
        early._launching.start()
    return early


def _launch(early: EarlyClis, launches: Mapping[str, Launch]) -> None:
    for agent, launch in launches.items():
        try:
            process = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=launch.cwd,
                env=launch.env(os.environ),
            )
        except OSError as exc:
            early.notes.append(f"cannot start agent {agent}'s CLI early: {exc}")
            continue
        early.started[agent] = EarlyCli(launch, process)
        early.agents.append(agent)


OpenProcess = Callable[..., Awaitable[Any]]


@dataclass
class SpawnOffer:
    """What the SDK's spawn of one agent's CLI may use instead of starting a process:
    the CLI started early (first connect only), and where to record the launch."""

    agent: str
    early: EarlyCli | None
    clis: EarlyClis | None
    adopted: bool = False
    launch: Launch | None = None  # what the SDK asked for

    async def open(self, real_open: OpenProcess, command: list[str], **kwargs: Any) -> Any:
        wanted = Launch.of(
            [str(part) for part in command],
            kwargs.get("env") or os.environ,
            str(kwargs.get("cwd") or os.getcwd()),
            os.environ,
        )
        self.launch = wanted
        early, self.early = self.early, None
        if early is not None:
            if (
                early.launch == wanted
                and kwargs.get("stdin")
                == kwargs.get("stdout")
                == kwargs.get("stderr")
                == subprocess.PIPE
                and kwargs.get("user") is None
                and early.process.poll() is None
            ):
                from corral.runner.adopted_process import AdoptedProcess

                self.adopted = True
                return AdoptedProcess(early.process)
            early.kill()
        process = await real_open(command, **kwargs)
        if self.clis is not None:
            self.clis.remember(self.agent, wanted)
        return process


# The offer of the agent whose CLI the SDK is starting in this task (corral.runner.sdk).
SPAWN_OFFER: ContextVar[SpawnOffer | None] = ContextVar("corral_spawn_offer", default=None)
