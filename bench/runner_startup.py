"""Runner start-up on this machine: process start to ready, to the first event, CPU-seconds.

    python -m bench.runner_startup --runs 10 --cpu 1 --cpu 0.25 \\
        --tree new=operator --tree old=<old checkout>/operator

Each run starts `python -m corral.cli runner` (a LongRunning session, the fake model on
loopback) inside a cgroup v1 CPU quota (`--cpu 1`: one CPU, `0.25`: 250m; needs root),
takes *listening* (HTTP server bound) and *ready* (the agent's CLI connected) from the
moments the runner logs "runner started" and "agent ready", checks that `/readyz` then
answers 200, then sends one message and reads its stream. (Polling `/readyz` every few
milliseconds instead costs the runner CPU inside the same quota as its booting CLI: under
load it was most of the runner's CPU and delayed the very readiness it measured.)
As in a pod, the runner has the pod's environment (the image's, not this machine's; until
session 31 it inherited this machine's) and reports activity (to a sink here that answers
204: the reporter's HTTP client and models are part of a start). CPU-seconds, at ready and
when the result arrives: everything the run started (the runner, its CLI and the CLI's
children), counted in nanoseconds by a cgroup's CPU accounting, and the runner's own (its
threads' scheduler time). Until session 30 they came from `/proc/PID/stat`, in ticks of
0.01 s. The load average is recorded per run.
Trees are run alternately, run by run, so load on the shared machine hits both alike.
`--wake`: each run is a Hybrid session's runner started again on the workspace and state
its previous run left (as a woken pod finds its volume), after one uncounted first start.
`--standby LABEL`: that tree's runs start as a pod of a warm pool would (issue 19 names one):
the process imports everything a runner's start imports, says so, and waits; the clock
and the CPU count start when the bench hands it its session (a line on stdin), after
which it starts as any runner does. Pod creation and the kubelet's part are not in it
(the wake bench's timeline has them).
Writes the raw numbers as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from corral.cluster.runner_image import read_recipe
from corral.testing.fake_anthropic import FakeAnthropic

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct")
PERIOD_US = 100_000


@dataclass
class RunGroups:
    """The cgroups one run's processes join: `cpuacct` counts, in nanoseconds, the CPU of
    every process started in it (the runner, its CLI and the CLI's children, exited ones
    too); `cpu` holds the quota, if any."""

    cpuacct: Path
    cpu: Path | None

    def joined(self) -> list[Path]:
        return [self.cpuacct] + ([self.cpu] if self.cpu else [])

    def cpu_seconds(self) -> float:
        return int((self.cpuacct / "cpuacct.usage").read_text()) / 1e9


@contextlib.contextmanager
def run_cgroups(cpus: float | None) -> Iterator[RunGroups]:
    """cgroup v1 groups for one run: CPU accounting, and a quota of `cpus` CPUs (None: no
    limit). Needs root."""
    name = f"corral-bench-startup-{os.getpid()}-{int((cpus or 0) * 1000)}m"
    made: list[Path] = []
    try:
        cpuacct = CGROUP_CPUACCT / name
        cpuacct.mkdir()
        made.append(cpuacct)
        cpu = None
        if cpus is not None:
            cpu = CGROUP_CPU / name
            cpu.mkdir()
            made.append(cpu)
            (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD_US)))
        yield RunGroups(cpuacct, cpu)
    finally:
        for group in made:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:  # processes still leaving
                    time.sleep(0.1)


def own_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads, from the scheduler's nanosecond counts
    (`/proc/PID/task/TID/schedstat`); its children are not in it."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class ActivitySink:
    """Takes the runners' activity reports (as the operator would) and answers 204."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 1) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


class LogWatch:
    """When the runner's log (JSON lines on stdout) first said each message."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            now = time.monotonic()
            with contextlib.suppress(ValueError):
                msg = json.loads(line).get("msg")
                with self._cond:
                    self.seen.setdefault(str(msg), now)
                    self._cond.notify_all()
        with self._cond:
            self.seen.setdefault("<eof>", time.monotonic())
            self._cond.notify_all()

    def wait(self, msg: str, timeout: float = 120) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: msg in self.seen or "<eof>" in self.seen, timeout):
                raise RuntimeError(f"the runner never logged {msg!r}")
            if msg not in self.seen:
                raise RuntimeError(f"the runner exited before it logged {msg!r}")
            return self.seen[msg]


def pod_environment(home: Path) -> dict[str, str]:
    """The environment a runner's pod gives it, not this machine's: the image's ENV (from
    its Dockerfile), a PATH, and a home of its own. The CLI reads CA bundles
    (`NODE_EXTRA_CA_CERTS`), proxies and more from variables a pod does not have: this
    machine's CA bundle alone cost the CLI about 0.02 CPU-seconds per start (session 31,
    the CLI started alone six times each way)."""
    return {
        **read_recipe().env,
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
    }


# As the image's `corral` script starts it (not `-m`, whose __main__ the SDK looks up).
ENTRY = "import sys; from corral.cli import main; sys.exit(main())"
# A standby runner: what a start imports (the API models, the SDK's transport and anyio's
# back end, aiohttp's server, the activity reports), imported ahead; then it waits for a
# line on stdin (its session handed over) and starts as ENTRY does.
STANDBY_ENTRY = (
    "import gc, json, sys; gc.disable(); "
    "import corral.runner.app, corral.runner.http_api, corral.runner.activity, "
    "corral.runner.session_file, corral.runner.listener, corral.runner.own_credentials, "
    "corral.runner.early_cli, corral.runner.jsonlog; "
    "import claude_agent_sdk._internal.transport.subprocess_cli, anyio._backends._asyncio; "
    "print(json.dumps({'msg': 'standby'}), flush=True); sys.stdin.readline(); " + ENTRY
)


def spawn_runner(
    tree: Path,
    groups: RunGroups,
    fake: FakeAnthropic,
    sink: ActivitySink,
    work: Path,
    port: int,
    env: dict[str, str],
    pattern: str = "LongRunning",
    standby: bool = False,
) -> tuple[subprocess.Popen[bytes], float]:
    """An idle LongRunning runner of `tree` (its stdout piped), started as the image starts
    it (`standby`: as STANDBY_ENTRY), inside the cgroups `groups`; and the monotonic time
    just before it started."""
    spec = work / "session.json"
    spec.write_text(json.dumps({"pattern": pattern}))
    (work / "home").mkdir(exist_ok=True)
    run_env = pod_environment(work / "home")
    run_env.update(
        {
            "PYTHONPATH": str(tree),
            "ANTHROPIC_BASE_URL": fake.url,
            "ANTHROPIC_API_KEY": "sk-ant-bench",
            "CORRAL_SESSION_NAME": "bench",
            "CORRAL_SESSION_NAMESPACE": "bench",
            "CORRAL_ACTIVITY_URL": sink.url,
            "CORRAL_ACTIVITY_TOKEN": "bench-token",
            **env,
        }
    )
    argv = [sys.executable, "-c", STANDBY_ENTRY if standby else ENTRY]
    argv += ["runner", "--session", str(spec)]
    argv += ["--workspace", str(work / "ws"), "--state-dir", str(work / "state")]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--termination-log", str(work / "t")]
    # The child joins the cgroups before it execs Python: the whole start is counted (and
    # limited).
    join = "".join(f"echo $$ > {group / 'cgroup.procs'} && " for group in groups.joined())
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", join + 'exec "$@"', "sh", *argv],
        env=run_env,
        stdin=subprocess.PIPE if standby else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return proc, started


def one_run(
    tree: Path,
    cpus: float | None,
    fake: FakeAnthropic,
    sink: ActivitySink,
    work: Path,
    port: int,
    env: dict[str, str],
    pattern: str = "LongRunning",
    standby: bool = False,
) -> dict[str, Any]:
    with run_cgroups(cpus) as groups:
        proc, started = spawn_runner(
            tree, groups, fake, sink, work, port, env, pattern, standby=standby
        )
        try:
            url = f"http://127.0.0.1:{port}"
            assert proc.stdout is not None
            log = LogWatch(proc.stdout)
            # A standby runner's time and CPU count from its claim, not its process start.
            cpu_base = runner_cpu_base = 0.0
            if standby:
                log.wait("standby")
                time.sleep(0.5)  # settled, as a pool's pod would be long before its claim
                cpu_base, runner_cpu_base = groups.cpu_seconds(), own_cpu_seconds(proc.pid)
                assert proc.stdin is not None
                started = time.monotonic()
                proc.stdin.write(b"claim\n")
                proc.stdin.flush()
            listening = log.wait("runner started") - started
            ready = log.wait("agent ready") - started
            cpu_ready = groups.cpu_seconds() - cpu_base
            if _get(url + "/readyz", timeout=10) != 200:
                raise RuntimeError("the runner logged 'agent ready' but /readyz is not 200")
            runner_cpu_ready = own_cpu_seconds(proc.pid) - runner_cpu_base
            req = urllib.request.Request(
                url + "/v1/messages", data=b'{"text": "hello"}', method="POST"
            )
            req.add_header("content-type", "application/json")
            first = first_text = None
            sent = time.monotonic()
            with urllib.request.urlopen(req, timeout=60) as resp:
                for line in iter(resp.readline, b""):
                    if line.startswith(b"data: "):
                        first = first or time.monotonic() - sent
                        if b'"text_delta"' in line:
                            first_text = first_text or time.monotonic() - sent
                        if b'"type": "result"' in line or b'"type":"result"' in line:
                            break
            result = time.monotonic() - sent
            cpu_answer = groups.cpu_seconds() - cpu_base
            runner_cpu_answer = own_cpu_seconds(proc.pid) - runner_cpu_base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "listening_s": round(listening, 4),
        "ready_s": round(ready, 4),
        "first_event_s": round(first or result, 4),
        # The first words of the reply (the first event may be the turn's `system init`).
        "first_text_s": round(first_text or result, 4),
        # The message goes as soon as the runner is ready: process start to its first event,
        # the runner's part of a new session's create → first event.
        "start_to_first_event_s": round(ready + (first or result), 4),
        "result_s": round(result, 4),
        "cpu_to_ready_s": round(cpu_ready, 4),
        "runner_cpu_to_ready_s": round(runner_cpu_ready, 4),
        "cpu_to_answer_s": round(cpu_answer, 4),
        "runner_cpu_to_answer_s": round(runner_cpu_answer, 4),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = runs[0].keys() if runs else ()
    return {f"{k}_p50": round(statistics.median(r[k] for r in runs), 4) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--cpu", type=float, action="append", help="CPU quota (repeatable; default: none)"
    )
    parser.add_argument(
        "--tree",
        action="append",
        help="LABEL=PATH of a corral source tree (its operator/ dir); default: this one",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="LABEL:NAME=VALUE for one tree's runner"
    )
    parser.add_argument(
        "--wake",
        action="store_true",
        help="a Hybrid session started again on the state its previous run left, as a "
        "woken pod finds its volume (one uncounted first start per tree and CPU)",
    )
    parser.add_argument(
        "--standby",
        action="append",
        default=[],
        help="LABEL of a tree whose runs start as a warm pool's pod would (counted from the "
        "claim; repeatable)",
    )
    parser.add_argument("--out", type=Path, help="write every number here as JSON")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent / "operator"
    trees = dict(t.split("=", 1) for t in args.tree or [f"this={here}"])
    unknown = set(args.standby) - set(trees)
    if unknown:
        parser.error(f"--standby names no --tree: {sorted(unknown)}")
    envs: dict[str, dict[str, str]] = {label: {} for label in trees}
    for item in args.env:
        label, _, pair = item.partition(":")
        name, _, value = pair.partition("=")
        envs[label][name] = value
    cpus: list[float | None] = list(args.cpu or [None])
    for tree in trees.values():
        # As in the image: byte-compiled ahead, nothing written at run time.
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], check=True)
    fake = FakeAnthropic()
    fake.start_in_thread()
    sink = ActivitySink()
    results: dict[str, Any] = {
        "runs": args.runs,
        "machine_cpus": os.cpu_count(),
        "load_1m_at_start": round(os.getloadavg()[0], 2),
        "cases": [],
    }
    results["mode"] = "wake" if args.wake else "first start"
    pattern = "Hybrid" if args.wake else "LongRunning"
    try:
        for cpu in cpus:
            per_tree: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
            kept = {label: tempfile.TemporaryDirectory() for label in trees}
            for n in range(-1 if args.wake else 0, args.runs):
                for label, tree in trees.items():
                    with contextlib.ExitStack() as stack:
                        tmp = (
                            kept[label].name
                            if args.wake
                            else stack.enter_context(tempfile.TemporaryDirectory())
                        )
                        run = one_run(
                            Path(tree),
                            cpu,
                            fake,
                            sink,
                            Path(tmp),
                            free_port(),
                            envs[label],
                            pattern,
                            standby=label in args.standby,
                        )
                    if n >= 0:
                        per_tree[label].append(run)
                    print(f"cpu={cpu} {label} #{n}: {run}", flush=True)
            for directory in kept.values():
                directory.cleanup()
            for label, runs in per_tree.items():
                case = {"cpu": cpu, "tree": label, "env": envs[label], **summary(runs)}
                case["standby"] = label in args.standby
                case["samples"] = runs
                results["cases"].append(case)
                print(json.dumps({k: v for k, v in case.items() if k != "samples"}))
    finally:
        fake.stop_thread()
        sink.stop()
    results["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
