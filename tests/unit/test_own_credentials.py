"""corral.runner.own_credentials: taken out of the environment, and the process hidden."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corral.api import runtime
from corral.runner.own_credentials import OwnCredentials, take


def test_take_removes_both_from_the_environment() -> None:
    environ = {
        runtime.ENV_ACTIVITY_TOKEN: "token",
        runtime.ENV_GATEWAY_CREDENTIAL: "credential",
        "KEPT": "yes",
    }
    credentials = take(environ)
    assert credentials == OwnCredentials(activity_token="token", gateway_credential="credential")
    assert environ == {"KEPT": "yes"}
    assert "token" not in repr(credentials) and "credential" not in repr(credentials)


def test_empty_or_missing_values_are_none() -> None:
    environ = {runtime.ENV_ACTIVITY_TOKEN: ""}
    assert take(environ) == OwnCredentials()
    assert environ == {}


@pytest.mark.skipif(sys.platform != "linux", reason="prctl is Linux's")
def test_hide_process_makes_the_process_non_dumpable_and_its_children_not() -> None:
    # In a child interpreter: the test process itself stays dumpable.
    code = (
        "import ctypes, subprocess, sys\n"
        "from corral.runner.own_credentials import hide_process\n"
        "libc = ctypes.CDLL(None)\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
        "hidden = hide_process()\n"
        "after = libc.prctl(3, 0, 0, 0, 0)\n"
        "child = subprocess.run([sys.executable, '-c', "
        "'import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))'],"
        " capture_output=True, text=True, check=True).stdout.strip()\n"
        "print(before, hidden, after, child)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "True", "0", "1"]
