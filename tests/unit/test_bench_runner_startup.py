"""The runner start-up bench's count of a runner's own CPU: its live threads, no child."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from bench.runner_startup import own_cpu_seconds

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
