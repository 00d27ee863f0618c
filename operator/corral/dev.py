"""`corral up`: Corral's main job on the embedded local cluster, in one command.

Starts the local control plane (building it on first use), installs the CRD, starts the
operator and applies one example session per pattern into the `demo` namespace, then
keeps the operator in the foreground. `--exit-when-ready` waits until every example is reconciled
and exits instead (used by the test suite, so this path stays working).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from corral.api import runtime

DEMO_NAMESPACE = "demo"
OPERATOR_NAMESPACE = "corral-system"
EXAMPLES = ("ephemeral.yaml", "long-running.yaml", "hybrid.yaml", "shared.yaml")
DEMO_VOLUMES = 4
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="the demo: `cluster up`, the CRD, the operator and one example session per "
        "pattern in namespace demo",
        description="Start the local cluster (as `corral cluster up`), install the CRD, run "
        "the operator in the foreground and apply one example session per pattern into "
        "namespace `demo`. Ctrl-C stops the operator; `corral cluster down` the cluster.",
    )
    parser.add_argument(
        "--examples", type=Path, default=_default_examples(), help="directory of the examples"
    )
    parser.add_argument("--no-examples", action="store_true", help="start without the examples")
    parser.add_argument("--port", type=int, default=8081, help="operator health/metrics port")
    parser.add_argument(
        "--exit-when-ready",
        dest="check",
        action="store_true",
        help="exit once every example has its pod (or Idle/Pending state) instead of serving",
    )
    # The old name of --exit-when-ready (`--check` means "verify, do not write" in `crd`).
    parser.add_argument("--check", dest="check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the cluster, and with --exit-when-ready for the examples",
    )
    parser.set_defaults(handler=_up)


def _default_examples() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"


def _namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": RESTRICTED},
    }


def _demo_volumes(root: Path) -> list[dict[str, Any]]:
    """hostPath PersistentVolumes for Hybrid examples: the KWOK nodes mount nothing, the
    claims just need something to bind to."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"corral-demo-{i}", "labels": {"corral.dev/demo": "true"}},
            "spec": {
                "capacity": {"storage": "20Gi"},
                "accessModes": ["ReadWriteOncePod"],
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": str(root / "volumes" / str(i))},
            },
        }
        for i in range(DEMO_VOLUMES)
    ]


def _demo_secret() -> dict[str, Any]:
    # A placeholder key: sessions on KWOK nodes never call the API. With a real node, the
    # runner talks to the fake Anthropic API the operator points it at.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "anthropic-api-key",
            "namespace": DEMO_NAMESPACE,
            "labels": {"corral.dev/credentials": "true"},
        },
        "stringData": {runtime.ENV_API_KEY: "sk-ant-placeholder-not-a-real-key"},
    }


def _up(args: argparse.Namespace) -> int:
    from corral.api.crd import crd_yaml
    from corral.cluster import control_plane, pki
    from corral.testing.operator import kwok_operator_config

    layout = control_plane.up(timeout=args.timeout)
    kubeconfig = layout.kubeconfig(pki.ADMIN)

    def apply(documents: list[dict[str, Any]] | str, namespace: str | None = None) -> None:
        text = documents if isinstance(documents, str) else yaml.safe_dump_all(documents)
        extra = ["-n", namespace] if namespace else []
        control_plane.kubectl(
            layout, "apply", "--server-side", "--force-conflicts", *extra, "-f", "-", stdin=text
        )

    apply(crd_yaml())
    control_plane.kubectl(
        layout,
        "wait",
        "--for=condition=Established",
        "crd/agentsessions.corral.dev",
        "--timeout=60s",
    )
    apply([_namespace(OPERATOR_NAMESPACE), _namespace(DEMO_NAMESPACE), *_demo_volumes(layout.root)])

    config = kwok_operator_config(OPERATOR_NAMESPACE)
    config_path = layout.root / "operator.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(by_alias=True, exclude_none=True)))
    argv = [
        sys.executable,
        "-m",
        "corral.cli",
        "operator",
        f"--kubeconfig={kubeconfig}",
        f"--config={config_path}",
        f"--port={args.port}",
        "--host=127.0.0.1",
    ]
    if args.check:
        # A check shares the cluster with test runs: act on the demo namespace only.
        argv += [f"--namespace={DEMO_NAMESPACE}", "--lease-name=corral-dev-check"]
    operator = subprocess.Popen(argv)
    try:
        if not args.no_examples:
            apply([_demo_secret()], DEMO_NAMESPACE)
            for example in EXAMPLES:
                apply((args.examples / example).read_text(), DEMO_NAMESPACE)
        kubectl_hint = f"KUBECONFIG={kubeconfig} kubectl"
        print(
            "\nCorral is running. Watch the sessions:\n"
            f"  {kubectl_hint} get ags -n {DEMO_NAMESPACE} -w\n"
            f"Operator metrics: http://127.0.0.1:{args.port}/metrics\n",
            flush=True,
        )
        if args.check:
            return _wait_reconciled(layout, args.timeout)
        return operator.wait()
    finally:
        if operator.poll() is None:
            operator.terminate()
            operator.wait(30)


def _wait_reconciled(layout: Any, timeout: float) -> int:
    """Every example session has observed its spec and has its pod (Hybrid: or is Pending)."""
    from corral.cluster import control_plane

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = control_plane.kubectl(
            layout,
            "get",
            "ags",
            "-n",
            DEMO_NAMESPACE,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase}/{.status.podName}"
            "{'\\n'}{end}",
        )
        rows = [line for line in out.splitlines() if line]
        done = [
            r
            for r in rows
            if r.split("=", 1)[1].split("/")[0] in ("Running", "Pending") and r.split("/", 1)[1]
        ]
        last = out
        if len(rows) == len(EXAMPLES) and len(done) == len(rows):
            print(out, flush=True)
            return 0
        time.sleep(1)
    print(f"not every example was reconciled in {timeout:.0f}s:\n{last}", file=sys.stderr)
    return 1
