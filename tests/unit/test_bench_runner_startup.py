"""The runner start-up bench: its count of a runner's own CPU (its live threads, no child)
and the environment it starts a runner with (the pod's)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bench.runner_startup import own_cpu_seconds, pod_environment

CHILD_BURNS = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass"


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_process_own_cpu_counts_every_live_thread_and_no_child() -> None:
    before = own_cpu_seconds(os.getpid())
    burnt, done = threading.Event(), threading.Event()

    def worker() -> None:
        _burn(0.2)
        burnt.set()
        done.wait()  # alive while counted, as a runner's threads are

    thread = threading.Thread(target=worker)
    thread.start()
    _burn(0.2)
    subprocess.run([sys.executable, "-c", CHILD_BURNS], check=True)
    assert burnt.wait(30)
    spent = own_cpu_seconds(os.getpid()) - before
    done.set()
    thread.join()
    # Both threads' 0.2 s; the child's whole second is not in it.
    assert 0.4 <= spent < 0.9


def test_a_benched_runner_has_its_pods_environment_not_this_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    env = pod_environment(tmp_path)
    assert "NODE_EXTRA_CA_CERTS" not in env and "HTTPS_PROXY" not in env
    # The image's ENV (images/runner/Dockerfile), and a home of its own.
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["HOME"] == str(tmp_path)
    assert env["PATH"]
