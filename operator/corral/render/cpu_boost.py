"""Start-up CPU boost: a session pod starts with a higher CPU limit than the session's.

The runner and its bundled CLI need about 1.2 CPU-seconds to start; under a 250m limit that
is about 5 s of throttling on an idle node. The pod therefore starts with the operator's
`startupCpuLimit` as its CPU limit (the request stays the session's `cpu`: scheduling and
fair share by requests are unchanged, the boost only uses idle CPU), and once the pod is
Ready (the runner's readiness, probed) the operator lowers the limit in place (the pod's `resize`
subresource).

QoS. A pod's QoS class may not change by a resize, and a pod whose requests equal its limits
is Guaranteed: a boosted pod is Burstable (CPU limit above request), so its settled limit is
the session's `cpu` plus one millicore, which keeps it Burstable. A pod without the boost
keeps requests equal to limits (Guaranteed), as before.
"""

from __future__ import annotations

import math
from decimal import Decimal

from corral.api.units import parse_quantity
from corral.api.v1alpha1 import AgentSessionSpec
from corral.config import OperatorConfig

# What keeps a boosted pod Burstable once settled (see the module's docstring).
SETTLED_HEADROOM_MILLICORES = 1


def millicores(quantity: str) -> int:
    """A CPU quantity in whole millicores, rounded up (the kubelet's own precision)."""
    return math.ceil(parse_quantity(quantity) * 1000)


def startup_cpu_limit(spec: AgentSessionSpec, config: OperatorConfig) -> str | None:
    """The CPU limit a new pod starts with, or None when it starts at the session's own."""
    if spec.resources.startup_boost is False or not config.startup_cpu_limit:
        return None
    boost = millicores(config.startup_cpu_limit)
    if boost <= settled_millicores(spec):
        return None
    return f"{boost}m"


def settled_millicores(spec: AgentSessionSpec) -> int:
    """The CPU limit of a boosted pod once its runner is ready."""
    return millicores(spec.resources.cpu) + SETTLED_HEADROOM_MILLICORES


def settled_cpu_limit(spec: AgentSessionSpec) -> str:
    return f"{settled_millicores(spec)}m"


def needs_settling(pod_cpu_limit: Decimal | None, spec: AgentSessionSpec) -> bool:
    """Whether a pod's CPU limit is a start-up boost still to be lowered: only ever down, so
    a pod made without the boost (limit equal to the session's cpu) is never resized."""
    if pod_cpu_limit is None:
        return False
    return math.ceil(pod_cpu_limit * 1000) > settled_millicores(spec)


def resize_patch(container: str, cpu_limit: str) -> dict[str, object]:
    """A strategic merge patch for the pod's `resize` subresource (containers by name)."""
    resources = {"limits": {"cpu": cpu_limit}}
    return {"spec": {"containers": [{"name": container, "resources": resources}]}}
