"""Faults of the local control plane for the chaos tests: kill, restart, compact.

Works on a cluster in a state directory of its own (never the shared one): a component
is SIGKILLed by the pid `corral cluster up` recorded, and started again with the same
command line (plus, for the API server, extra flags such as `--watch-cache=false`).
etcd's data directory is kept, so a restart finds every object again.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from corral.cluster import control_plane, process
from corral.cluster.build import binary_path
from corral.cluster.layout import Layout


class FaultError(RuntimeError):
    """A component could not be killed or started again."""


def _spec(name: str) -> control_plane.ComponentSpec:
    for spec in control_plane.COMPONENTS:
        if spec.name == name:
            return spec
    raise FaultError(f"no component {name!r}; one of {[s.name for s in control_plane.COMPONENTS]}")


@dataclass
class ControlPlane:
    """The control plane of the cluster in `root`."""

    root: Path

    @property
    def layout(self) -> Layout:
        layout = Layout.load(self.root)
        if layout is None:
            raise FaultError(f"no cluster in {self.root}")
        return layout

    def pid(self, name: str) -> int | None:
        spec = _spec(name)
        return process.running_pid(self.layout.pid_file(spec.name), str(binary_path(spec.binary)))

    def kill(self, name: str, timeout: float = 10.0) -> None:
        """SIGKILL the component (no clean shutdown) and wait until it is gone."""
        pid = self.pid(name)
        if pid is None:
            raise FaultError(f"{name} is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pid(name) is not None:
            if time.monotonic() > deadline:
                raise FaultError(f"{name} (pid {pid}) survived SIGKILL for {timeout:.0f}s")
            time.sleep(0.05)

    def start(self, name: str, extra_args: tuple[str, ...] = (), timeout: float = 120.0) -> float:
        """Start a stopped component with its usual command line and `extra_args`; wait
        until it is healthy. Returns the seconds that took."""
        started = time.monotonic()
        if self.pid(name) is not None:
            raise FaultError(f"{name} is already running")
        spec = _spec(name)
        layout = self.layout
        log = layout.log_file(spec.name)
        process.start([*spec.argv(layout), *extra_args], layout.pid_file(spec.name), log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is None:
                raise FaultError(f"{name} exited while starting:\n{process.log_tail(log)}")
            if control_plane._healthy(layout, spec, pid):
                return time.monotonic() - started
            time.sleep(0.2)
        raise FaultError(f"{name} not healthy after {timeout:.0f}s:\n{process.log_tail(log)}")

    def restart(self, name: str, extra_args: tuple[str, ...] = ()) -> float:
        """Stop (SIGTERM) and start again, e.g. with other flags; seconds until healthy."""
        spec = _spec(name)
        process.stop(self.layout.pid_file(spec.name), str(binary_path(spec.binary)))
        return self.start(name, extra_args)

    def apiserver_ready(self) -> bool:
        layout = self.layout
        return control_plane._https_ok(layout, layout.ports["apiserver"], "/readyz")

    def wait_apiserver_ready(self, timeout: float = 120.0) -> float:
        """Seconds until the API server's /readyz answers ok (after etcd came back, say)."""
        started = time.monotonic()
        while not self.apiserver_ready():
            if time.monotonic() - started > timeout:
                raise FaultError(f"the API server was not ready within {timeout:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - started

    def apiserver_metrics(self) -> str:
        """The API server's /metrics text (Prometheus format), read as the admin."""
        layout = self.layout
        certs = layout.certs
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.cert("admin")), str(certs.key("admin")))
        url = f"{layout.apiserver_url}/metrics"
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            text: str = response.read().decode()
            return text

    # --- etcd, through its HTTP gateway ---------------------------------------------------

    def _etcd(self, path: str, body: dict[str, object]) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.layout.ports['etcd-client']}{path}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def etcd_revision(self) -> int:
        """etcd's current revision (the resourceVersion of the newest write)."""
        answer = self._etcd("/v3/kv/range", {"key": "AA==", "limit": 1})
        header = answer.get("header")
        assert isinstance(header, dict), answer
        return int(header["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: now): a watch from an older
        resourceVersion is answered 410 Gone. Returns the revision compacted to."""
        revision = revision or self.etcd_revision()
        self._etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision
