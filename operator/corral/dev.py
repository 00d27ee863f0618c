"""`corral up` and `corral down`: Corral's main job on a local cluster, in one command.

Where the machine can run the real node (Linux, root, the packages of hack/node-deps.sh:
`corral.cluster.node.preflight`), `corral up` starts the control plane with the real node
beside the KWOK ones, installs Corral from the Helm chart (operator and gateway as pods),
starts the model the sessions talk to (the bundled fake, or a relay to the real API with
ANTHROPIC_API_KEY), applies the examples, waits until each has done its work, and exits
with what to do next; everything keeps running until `corral down`. Each step waits for
what the next needs (nodes, storage, the operator's lease), so a clean start posts no
Warning Event.

Elsewhere it falls back to KWOK nodes, says why, and runs the operator in the foreground:
the examples get pods, but nothing runs in them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from corral.devenv.install import DEMO_NAMESPACE, OPERATOR_NAMESPACE, RESTRICTED

EXAMPLES = ("ephemeral.yaml", "long-running.yaml", "hybrid.yaml", "shared.yaml")
DEMO_VOLUMES = 4
__all__ = ["DEMO_NAMESPACE", "EXAMPLES", "OPERATOR_NAMESPACE", "RESTRICTED", "register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="the demo: a local cluster, Corral, and one example session per pattern in "
        "namespace demo",
        description="Start the local cluster (with a real node where this machine can run "
        "one, else KWOK nodes only), install Corral and apply one example session per "
        "pattern into namespace `demo`. With the real node it returns once every example has "
        "done its work and keeps everything running until `corral down`; on KWOK it runs "
        "the operator in the foreground (Ctrl-C stops it).",
    )
    parser.add_argument(
        "--examples", type=Path, default=_default_examples(), help="directory of the examples"
    )
    parser.add_argument("--no-examples", action="store_true", help="start without the examples")
    parser.add_argument(
        "--kwok",
        action="store_true",
        help="KWOK nodes only, even where the real node could run (nothing runs in the pods)",
    )
    parser.add_argument("--port", type=int, default=8081, help="KWOK: operator health/metrics port")
    parser.add_argument(
        "--exit-when-ready",
        dest="check",
        action="store_true",
        help="KWOK: exit once every example has its pod instead of serving; real node: the "
        "default (exit 1 if an example does not get there)",
    )
    # The old name of --exit-when-ready (`--check` means "verify, do not write" in `crd`).
    parser.add_argument("--check", dest="check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the control plane, and on KWOK for the examples",
    )
    parser.add_argument(
        "--sessions-timeout",
        type=float,
        default=600.0,
        help="real node: seconds to wait for the examples to do their work",
    )
    parser.set_defaults(handler=_up)
    down = subparsers.add_parser(
        "down",
        help="stop what `corral up` started: the model, Corral, the cluster",
        description="Stop the model process `corral up` started and the local cluster "
        "(`corral cluster down`), removing its state. With --keep-cluster: uninstall the "
        "demo (namespace demo, the Helm release) and keep the cluster.",
    )
    down.add_argument(
        "--keep-cluster", action="store_true", help="keep the cluster; remove only the demo"
    )
    down.set_defaults(handler=_down)


def _default_examples() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"


def real_node_blocker(force_kwok: bool, root: Path) -> str | None:
    """Why the real node cannot run here (None: it can)."""
    from corral.cluster import control_plane, node

    if force_kwok:
        return "--kwok was given"
    if sys.platform != "linux":
        return f"the real node needs Linux (this is {sys.platform})"
    try:
        node.preflight()
    except node.NodeError as error:
        return str(error)
    layout = control_plane.current_layout(root)
    if layout is not None and not layout.real_node and control_plane.is_up(root):
        return (
            f"a cluster without a real node is already running in {root} "
            "(`corral down` it, then run `corral up` again for the real node)"
        )
    return None


def _up(args: argparse.Namespace) -> int:
    from corral.cluster.paths import state_dir
    from corral.devenv.steps import Steps

    steps = Steps()
    blocker = real_node_blocker(args.kwok, state_dir())
    if blocker is not None:
        steps.note(
            f"[yellow]KWOK only[/]: {blocker}.\n"
            "  Sessions get pods on simulated nodes, where nothing runs: the Ephemeral one "
            "stays Running, TURNS and COST stay empty, and nobody can talk to them. "
            "On Linux as root after `bash hack/node-deps.sh`, `corral up` runs them for real."
        )
        return _up_kwok(args, steps)
    return _up_real(args, steps)


# --- the real node ------------------------------------------------------------------------------


def _cold_parts() -> tuple[list[str], bool]:
    """What this start has to build (binaries from Go modules, images), and whether that
    is only Corral's own images over cached bases (a change to Corral's code)."""
    from corral.cluster import node, runner_image
    from corral.cluster.build import is_built
    from corral.cluster.control_plane import NEEDED_COMPONENTS
    from corral.cluster.versions import COMPONENTS, NODE_COMPONENTS

    names = [*NEEDED_COMPONENTS, "helm", *NODE_COMPONENTS]
    missing = [n for n in names if not is_built(COMPONENTS[n])]
    if missing:
        return missing, False
    try:
        specs = [s for s in node.node_images() if not s.is_built()]
    except RuntimeError:  # the node's binaries are needed to name its images
        return ["images"], False
    projects = {p.name: p for p in (runner_image.RUNNER, runner_image.OPERATOR)}
    code_only = all(
        s.name in projects and runner_image.base_is_built(projects[s.name]) for s in specs
    )
    return [s.name + " image" for s in specs], code_only


def build_note(missing: list[str], code_only: bool) -> str | None:
    """What `corral up` says before it builds, and how long that takes."""
    if not missing:
        return None
    names = f"{', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}"
    if code_only:
        return f"Rebuilding the {names} for this tree (1 to 2 minutes; the rest is cached)."
    return (
        f"First run: building {names} into the cache. This takes 15-25 minutes once (Go "
        "builds, a Debian root filesystem for the runner image); later starts take about a "
        "minute."
    )


def _up_real(args: argparse.Namespace, steps: Any) -> int:
    from corral.cluster import control_plane
    from corral.devenv import examples, install, model

    started = time.monotonic()
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    choice = model.choose_model(os.environ)
    note = build_note(*_cold_parts())
    if note:
        steps.note(note)
    try:
        with steps.step("local cluster with a real node (API server, containerd, kubelet)"):
            layout = control_plane.up(timeout=args.timeout, real_node=True)
        with steps.step("volume provisioner (default StorageClass)"):
            install.wait(
                "a default StorageClass",
                lambda: install.default_storage_class(layout),
                120,
                "see `corral cluster status` (node-local-path)",
            )
        with steps.step("model: " + ("relay to the real API" if choice.real else "fake model")):
            model.start(layout, choice)
            install.wait(
                "the model answering",
                lambda: model.serving(layout),
                60,
                f"see {layout.log_file(model.PROCESS_NAME)}",
            )
        with steps.step("Corral from the Helm chart (operator and gateway pods)"):
            install.install_chart(layout, install.chart_values(layout, choice), choice)
            install.wait(
                "an operator holding its lease",
                lambda: install.operator_leading(layout),
                180,
                f"kubectl -n {OPERATOR_NAMESPACE} get pods,lease",
            )
        user = None
        if not args.no_examples:
            with steps.step("examples applied in namespace demo"):
                install.apply(layout, [install.namespace(DEMO_NAMESPACE)])
                fitted = [examples.fit_to_real_node(d) for d in examples.load(args.examples)]
                install.apply(layout, fitted, DEMO_NAMESPACE)
            with steps.step("examples doing their work"):
                verdicts = _wait_examples(layout, steps, args.sessions_timeout)
            with steps.step("a user for the corral CLI (token kubeconfig)"):
                user = install.user_kubeconfig(layout)
        else:
            verdicts = []
    except (control_plane.ClusterError, install.InstallError) as error:
        steps.note(f"[red]error[/]: {error}")
        return 1
    ok = all(v.ready for v in verdicts)
    for verdict in verdicts:
        mark = "[green]✓[/]" if verdict.ready else "[red]✗[/]"
        steps.note(f"  {mark} demo/{verdict.name}: {verdict.state}")
    warnings = []
    for line in install.warning_events(layout, since):
        about = install.not_corrals(line)
        if about:
            steps.note(f"note ({about}, not Corral): {line}")
        else:
            warnings.append(line)
    if warnings:
        steps.note(f"[yellow]{len(warnings)} Warning Event(s) since the start:[/]")
        for line in warnings[:10]:
            steps.note(f"  {line}")
    steps.note(f"Ready in {time.monotonic() - started:.0f}s. The sessions use {choice.describe()}.")
    print(next_steps(layout, user, choice), flush=True)
    return 0 if ok else 1


def _wait_examples(layout: Any, steps: Any, timeout: float) -> list[Any]:
    import json

    from corral.devenv import examples, install

    deadline = time.monotonic() + timeout
    verdicts: list[Any] = []
    while time.monotonic() < deadline:
        out = install.kubectl(layout, "-n", DEMO_NAMESPACE, "get", "ags", "-o", "json")
        verdicts = [examples.judge(item) for item in json.loads(out)["items"]]
        done = sum(v.ready for v in verdicts)
        steps.update(
            f"{done}/{len(verdicts)}: "
            + "; ".join(f"{v.name} {v.state}" for v in verdicts if not v.ready)
        )
        if verdicts and (done == len(verdicts) or any(v.failed for v in verdicts)):
            return verdicts
        time.sleep(2)
    return verdicts


def _venv_hint() -> str:
    """`source …/activate` when this interpreter's `corral` is not on PATH: what a shell
    that ran `bash hack/dev.sh` needs first."""
    bin_dir = Path(sys.prefix) / "bin"
    activate = bin_dir / "activate"
    if shutil.which("corral") == str(bin_dir / "corral") or not activate.exists():
        return ""
    tools = "corral, kubectl and helm" if (bin_dir / "kubectl").exists() else "corral"
    return f"  source {activate}        # {tools} on your PATH\n"


def _kubectl() -> str:
    """`kubectl` where hack/setup.sh linked it into the venv, else the cache's binary."""
    from corral.cluster.build import binary_path

    return (
        "kubectl"
        if (Path(sys.prefix) / "bin" / "kubectl").exists()
        else str(binary_path("kubectl"))
    )


def next_steps(layout: Any, user: Path | None, choice: Any) -> str:
    """What to do next, as commands that work when pasted into a new shell."""
    from corral.cluster import pki

    admin = layout.kubeconfig(pki.ADMIN)
    lines = ["", "What next:"]
    if hint := _venv_hint():
        lines.append(hint.rstrip("\n"))
    if user is not None:
        lines += [
            "  # a user with the chart's corral-session-user role: the CLI talks to sessions",
            "  # through the gateway, via the API server's service proxy, with this token",
            f"  export KUBECONFIG={user}",
            "  corral ls -A                                 # every session: phase, turns, cost",
            '  corral send demo/docs-assistant "What can you do?"',
            "  corral chat demo/docs-assistant              # interactive; Ctrl-D leaves",
            "  corral transcript demo/docs-assistant        # the conversation so far",
            "  corral logs demo/repo-janitor",
        ]
    lines += [
        "As the cluster admin:",
        f"  {_kubectl()} --kubeconfig {admin} get ags,pods -n demo",
        f"  {_kubectl()} --kubeconfig {admin} -n {OPERATOR_NAMESPACE} logs deploy/corral",
        "Stop everything:",
        f"  {_state_env()}corral down",
    ]
    if not choice.real:
        lines.append(
            # Running pods read their key at start: a new key needs new pods.
            f"For the real model: {_state_env()}corral down, then "
            f"{_state_env()}ANTHROPIC_API_KEY=sk-ant-... corral up"
        )
    return "\n".join(lines)


def _state_env() -> str:
    explicit = os.environ.get("CORRAL_STATE_DIR")
    return f"CORRAL_STATE_DIR={explicit} " if explicit else ""


# --- KWOK only ----------------------------------------------------------------------------------


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
    # A placeholder key: sessions on KWOK nodes never call the API.
    from corral.api import runtime

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


def _up_kwok(args: argparse.Namespace, steps: Any) -> int:
    from corral.api.crd import crd_yaml
    from corral.cluster import control_plane, pki
    from corral.testing.operator import kwok_operator_config

    with steps.step("local cluster (API server, KWOK nodes)"):
        layout = control_plane.up(timeout=args.timeout)
    kubeconfig = layout.kubeconfig(pki.ADMIN)

    def apply(documents: list[dict[str, Any]] | str, namespace: str | None = None) -> None:
        text = documents if isinstance(documents, str) else yaml.safe_dump_all(documents)
        extra = ["-n", namespace] if namespace else []
        control_plane.kubectl(
            layout, "apply", "--server-side", "--force-conflicts", *extra, "-f", "-", stdin=text
        )

    with steps.step("CRD and volumes"):
        apply(crd_yaml())
        control_plane.kubectl(
            layout,
            "wait",
            "--for=condition=Established",
            "crd/agentsessions.corral.dev",
            "--timeout=60s",
        )
        apply(
            [
                _namespace(OPERATOR_NAMESPACE),
                _namespace(DEMO_NAMESPACE),
                *_demo_volumes(layout.root),
            ]
        )
        # Claims made before the PV controller has seen their volumes would be reported
        # unbound: wait until each has a phase (Available, or Bound/Released from an
        # earlier run in a reused cluster).
        _wait_volumes_seen(layout, 60)

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
        with steps.step("operator (a local process)"):
            _wait_healthy(args.port, operator, 60)
        if not args.no_examples:
            with steps.step("examples applied in namespace demo"):
                apply([_demo_secret()], DEMO_NAMESPACE)
                for example in EXAMPLES:
                    apply((args.examples / example).read_text(), DEMO_NAMESPACE)
        print(
            "\nCorral is running on KWOK nodes (nothing runs in the pods). Watch the sessions:\n"
            f"{_venv_hint()}"
            f"  {_kubectl()} --kubeconfig {kubeconfig} get ags -n {DEMO_NAMESPACE} -w\n"
            f"Operator metrics: http://127.0.0.1:{args.port}/metrics\n"
            f"Ctrl-C stops the operator; `{_state_env()}corral down` the cluster.\n",
            flush=True,
        )
        if args.check:
            return _wait_reconciled(layout, args.timeout)
        return operator.wait()
    finally:
        if operator.poll() is None:
            operator.terminate()
            operator.wait(30)


def _wait_volumes_seen(layout: Any, timeout: float) -> None:
    from corral.cluster import control_plane

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phases = control_plane.kubectl(
            layout,
            "get",
            "pv",
            "-l",
            "corral.dev/demo=true",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{' '}{end}",
        ).split()
        if len(phases) == DEMO_VOLUMES and "Pending" not in phases:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the demo volumes got no phase within {timeout:.0f}s")


def _wait_healthy(port: int, operator: subprocess.Popen[bytes], timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the operator was not healthy on port {port} within {timeout:.0f}s")


def _wait_reconciled(layout: Any, timeout: float) -> int:
    """Every example session has observed its spec and has its pod (Hybrid: or is Pending)."""
    import json

    from corral.cluster import control_plane
    from corral.devenv import examples

    deadline = time.monotonic() + timeout
    rows: list[str] = []
    while time.monotonic() < deadline:
        out = control_plane.kubectl(layout, "get", "ags", "-n", DEMO_NAMESPACE, "-o", "json")
        items = json.loads(out)["items"]
        rows = [
            f"{item['metadata']['name']}={(item.get('status') or {}).get('phase') or ''}/"
            f"{(item.get('status') or {}).get('podName') or ''}"
            for item in items
        ]
        if len(items) == len(EXAMPLES) and all(examples.judge_kwok(i).ready for i in items):
            print("\n".join(rows), flush=True)
            return 0
        time.sleep(1)
    print(
        f"not every example was reconciled in {timeout:.0f}s:\n" + "\n".join(rows), file=sys.stderr
    )
    return 1


# --- down ---------------------------------------------------------------------------------------


def _down(args: argparse.Namespace) -> int:
    from corral.cluster import control_plane
    from corral.devenv import install, model

    layout = control_plane.current_layout()
    if layout is not None and model.stop(layout):
        print("stopped the model process", file=sys.stderr)
    if not args.keep_cluster:
        return 1 if control_plane.down() else 0
    if layout is None or not control_plane.is_up(layout.root):
        print("no local cluster is up", file=sys.stderr)
        return 1
    install.kubectl(
        layout,
        "delete",
        "namespace",
        DEMO_NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=180s",
        check=False,
    )
    install.kubectl(
        layout, "delete", "clusterrolebinding", install.DEMO_USER, "--ignore-not-found", check=False
    )
    removed = install.uninstall_chart(layout)
    print(
        "uninstalled the Helm release" if removed else "no Helm release to uninstall",
        file=sys.stderr,
    )
    return 0
