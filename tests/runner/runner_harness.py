"""Helpers for the runner tests: runner subprocesses and a small client for their API.

Runners are real processes (`python -m corral.cli runner`) so SIGTERM, exit codes and the
termination log are the real thing; they drive the real SDK and its bundled CLI against
the fake API on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Never a real key: the fake accepts anything and records no credentials.
TEST_API_KEY = "sk-ant-test-0123456789abcdef"
READY_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


@dataclass
class Runner:
    """A runner subprocess and a small synchronous client for its API."""

    proc: subprocess.Popen[bytes]
    url: str
    workspace: Path
    state_dir: Path
    log_path: Path
    termination_log: Path
    _log_handle: Any = field(repr=False, default=None)
    # The session file the runner was started with (and re-reads between messages).
    spec_file: Path | None = None

    def write_spec(self, spec: dict[str, Any]) -> None:
        """Replace the session file as the kubelet updates a projected one."""
        assert self.spec_file is not None
        project_file(self.spec_file, json.dumps(spec))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        code, body = self.request("GET", "/v1/status")
        assert code == 200, body
        return dict(body)

    def send(
        self, text: str, agent: str | None = None, timeout: float = 120.0
    ) -> list[dict[str, Any]]:
        """POST /v1/messages and read the SSE stream to its end; returns every event."""
        body: dict[str, Any] = {"text": text}
        if agent:
            body["agent"] = agent
        req = urllib.request.Request(
            self.url + "/v1/messages", data=json.dumps(body).encode(), method="POST"
        )
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            return list(parse_sse(iter(resp.readline, b"")))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds until /readyz said ready."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited {self.proc.returncode}:\n{self.logs_text()}")
            try:
                code, _ = self.request("GET", "/readyz", timeout=2)
                if code == 200:
                    return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"runner not ready after {timeout}s:\n{self.logs_text()}")

    def wait_ready_or_busy(self, timeout: float = READY_TIMEOUT) -> None:
        """Until an agent is at work (an Ephemeral runner is never idle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited {self.proc.returncode}:\n{self.logs_text()}")
            try:
                if self.status()["state"] == "busy" and self.cli_pids():
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"runner never busy:\n{self.logs_text()}")

    def wait_status(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"status never matched: {json.dumps(status)[:2000]}")

    def terminate(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log_handle:
                self._log_handle.close()
                self._log_handle = None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logs_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"unparsed": line})
        return lines

    def cli_pids(self) -> list[int]:
        """The runner's child processes (its Claude CLIs)."""
        children: list[int] = []
        task_dir = Path(f"/proc/{self.proc.pid}/task")
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            children.extend(int(pid) for pid in text)
        return children


def project_file(path: Path, content: str) -> None:
    """Write `path` as the kubelet lays out a projected volume (its AtomicWriter): the
    content in a new timestamped directory, `..data` swapped to it by a rename, `path` a
    symlink through `..data`, and the previous directory removed. A reader that resolved
    the symlinks once would be left holding a deleted path."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    (version / path.name).write_text(content)
    data = directory / "..data"
    previous = data.resolve() if data.is_symlink() else None
    swap = directory / "..data_tmp"
    swap.symlink_to(version.name)
    os.replace(swap, data)
    if not path.is_symlink():
        path.symlink_to(Path("..data") / path.name)
    if previous is not None:
        for child in previous.iterdir():
            child.unlink()
        previous.rmdir()


def start_runner(
    spec: dict[str, Any],
    base: Path,
    fake_url: str | None,
    *,
    workspace: Path | None = None,
    state_dir: Path | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    name: str = "runner",
    wait: bool = True,
) -> Runner:
    base.mkdir(parents=True, exist_ok=True)
    spec_file = base / f"{name}-spec" / "session.json"
    project_file(spec_file, json.dumps(spec))
    workspace = workspace or base / "workspace"
    state_dir = state_dir or base / "state"
    port = free_port()
    termination_log = base / f"{name}-termination-log"
    log_path = base / f"{name}-{time.monotonic_ns()}.log"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    run_env.update({"CORRAL_SESSION_NAME": name, "CORRAL_SESSION_NAMESPACE": "tests"})
    if fake_url:
        run_env.update({"ANTHROPIC_BASE_URL": fake_url, "ANTHROPIC_API_KEY": TEST_API_KEY})
    run_env.update(env or {})
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "runner",
            "--session",
            str(spec_file),
            "--workspace",
            str(workspace),
            "--state-dir",
            str(state_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--termination-log",
            str(termination_log),
            *(args or []),
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=run_env,
    )
    runner = Runner(
        proc,
        f"http://127.0.0.1:{port}",
        workspace,
        state_dir,
        log_path,
        termination_log,
        handle,
        spec_file=spec_file,
    )
    if wait:
        try:
            runner.wait_ready()
        except BaseException:
            runner.kill()
            raise
    return runner


def result_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events, "no events"
    assert events[-1]["type"] == "result", events[-1]
    return events[-1]


def history_text(body: dict[str, Any]) -> str:
    """Everything the CLI sent as conversation history, as one string to search."""
    return json.dumps(body.get("messages", []), ensure_ascii=False)


def send_in_background(
    runner: Runner, text: str, timeout: float = 120.0
) -> tuple[threading.Thread, list[Any]]:
    """Send `text` from a thread; its events (or the exception) land in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.extend(runner.send(text, timeout=timeout))
        except Exception as exc:  # surfaced by the test's assertions
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out
