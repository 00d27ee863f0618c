"""The runner's own credentials, kept from the agent it runs.

The pod's environment carries two values meant for the runner alone: the token its activity
reports carry to the operator, and the credential the gateway presents to it. Every process
the runner starts (each agent's CLI, and the CLI's Bash children) inherits the runner's
environment, and any process of the pod's user can read another's `/proc/<pid>/environ`
(which keeps the environment the process started with, whatever it removed since) as long
as that process is dumpable. So `corral runner`, before it starts anything, takes both out
of its environment and makes itself non-dumpable: its `/proc` files then belong to root,
and no process of the pod's user can read its memory or trace it.

An agent holding the activity token could report its own session busy for ever (a Hybrid
session that never sleeps) or report any cost and turn count. This narrows, not closes, the
way to them: PID 1 (tini) and the kubelet's exec probes hold the container's environment
too (docs/hardening.md, "Left open").
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from corral.api import runtime

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


@dataclass(frozen=True)
class OwnCredentials:
    # repr=False: settings that hold them may be logged.
    activity_token: str | None = field(default=None, repr=False)
    gateway_credential: str | None = field(default=None, repr=False)


def take(environ: MutableMapping[str, str] = os.environ) -> OwnCredentials:
    """The runner's credentials, removed from `environ` (an empty value counts as none)."""
    return OwnCredentials(
        activity_token=environ.pop(runtime.ENV_ACTIVITY_TOKEN, "") or None,
        gateway_credential=environ.pop(runtime.ENV_GATEWAY_CREDENTIAL, "") or None,
    )


def hide_process() -> bool:
    """Make this process non-dumpable (Linux); False where that is not possible.

    Children are not affected: dumpability is reset at exec, so the CLI stays an ordinary
    process (and holds neither credential)."""
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
