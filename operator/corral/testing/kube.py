"""Helpers for tests and benchmarks that talk to a real API server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def create_namespace(
    core: client.CoreV1Api, name: str, labels: dict[str, str], timeout: float = 30.0
) -> str:
    """Create namespace `name` and wait for its `default` ServiceAccount: the
    controller-manager adds it a moment later, and until then the ServiceAccount admission
    plugin refuses pods (as on any cluster). After an API server restart that moment may be
    a minute (the controller-manager's informers back off from a cold authorizer)."""
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )

    def has_default_account() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    wait_for(has_default_account, timeout=timeout, what=f"the default ServiceAccount in {name}")
    return name


def wait_volumes_available(core: client.CoreV1Api, names: list[str], timeout: float = 30.0) -> None:
    """Wait until the PV controller has seen each of these pre-bound volumes (it marks them
    Available). A claim created before that may bind to any other Available volume that fits,
    such as the ones `corral up` leaves for its demo sessions."""

    def all_available() -> bool:
        statuses = [core.read_persistent_volume(name).status for name in names]
        return all(status and status.phase in ("Available", "Bound") for status in statuses)

    wait_for(all_available, timeout=timeout, what=f"the volumes {names} to be Available")
