"""`corral operator`: run the controller (kopf watches + Corral's workers) in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.config import OperatorConfig

log = logging.getLogger("corral.operator")
# The Helm chart's Service name for a release named `corral`.
DEFAULT_SERVICE = "corral"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Allocations (net) between collections of the young generation (Python: 700); see _main.
YOUNG_COLLECTION_THRESHOLD = 10_000


def own_namespace(
    environ: dict[str, str], namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE
) -> str | None:
    """The namespace the operator runs in when it runs in a pod (None: out of cluster):
    POD_NAMESPACE (the chart sets it), else the mounted ServiceAccount's namespace."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    if environ.get("KUBERNETES_SERVICE_HOST") and namespace_file.is_file():
        return namespace_file.read_text(encoding="utf-8").strip() or None
    return None


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the AgentSession operator",
        description="Run the operator against the cluster of --kubeconfig (or in-cluster): "
        "it watches AgentSessions and makes their pods, Services, NetworkPolicies and volumes. "
        "Replicas elect a leader through a Lease; the port serves /healthz, /readyz, /metrics "
        "and the runners' activity reports.",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="operator config YAML (see docs/install.md; default: built-in defaults)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable) (default: all namespaces)",
    )
    parser.add_argument("--workers", type=int, default=64, help="concurrent reconciles")
    parser.add_argument("--port", type=int, default=8081, help="health, metrics and activity port")
    parser.add_argument("--host", default="0.0.0.0", help="address of that port")
    parser.add_argument(
        "--no-leader-election",
        action="store_true",
        help="act at once, without the Lease (one replica only)",
    )
    parser.add_argument(
        "--service-name",
        default=os.environ.get("CORRAL_SERVICE_NAME", DEFAULT_SERVICE),
        help="in a cluster, the operator's Service: runners report activity to it unless the "
        "config sets activityUrl (default: $CORRAL_SERVICE_NAME, else %(default)s, the "
        "chart's Service of a release named corral)",
    )
    parser.add_argument(
        "--service-port",
        type=int,
        help="port of that Service (default: --port)",
    )
    parser.add_argument(
        "--lease-name", default="corral-operator", help="name of the leader-election Lease"
    )
    parser.add_argument(
        "--lease-namespace", help="namespace of the Lease (default: the config's namespace)"
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=10.0,
        help="a standby takes over once the Lease has not been renewed for this long",
    )
    parser.add_argument(
        "--renew-seconds", type=float, default=2.0, help="how often the leader renews the Lease"
    )
    parser.add_argument("--identity", help="this replica's name in the Lease (default: host+pid)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from corral import logs

    logs.configure(getattr(logging, args.log_level.upper(), logging.INFO))
    if args.kubeconfig:
        # kopf's login reads the same file through the official client's loader.
        os.environ["KUBECONFIG"] = args.kubeconfig
    return asyncio.run(_main(args))


def load_config(path: Path | None) -> OperatorConfig | None:
    """The operator's config, or None with one line in the log that names the file, each
    key at fault and the problem (rather than a traceback)."""
    import yaml
    from pydantic import ValidationError

    from corral.api.validation import problems
    from corral.config import OperatorConfig

    try:
        return OperatorConfig.load(path)
    except ValidationError as error:
        problem = problems(error, root="(the whole file)")
    except (ValueError, OSError, yaml.YAMLError) as error:
        problem = str(error)
    log.error("config %s refused: %s", path, problem)
    return None


async def supervise(tasks: Collection[asyncio.Task[Any]], stop: asyncio.Event) -> int:
    """Wait for a stop signal or the end of one of `tasks`, and return the exit code.

    The tasks run for the life of the process, so one that ends on its own (an error no
    loop handled, or a plain return) leaves the operator half alive: that is exit code 1,
    and Kubernetes restarts the pod. Fix: the process used to exit 0 then (found with a
    dropped API connection in the leader loop). A requested stop is 0.
    """
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    ended = [task for task in done if task is not stopper]
    failed = [t for t in ended if not t.cancelled() and t.exception() is not None]
    for task in failed:
        error = task.exception()
        log.error("%s failed: %r", task.get_name(), error, exc_info=error)
    if failed:
        return 1
    if stop.is_set():
        return 0
    for task in ended:
        log.error("%s ended on its own", task.get_name())
    return 1


async def _main(args: argparse.Namespace) -> int:
    import kopf
    from aiohttp import web

    import corral.controller.handlers  # noqa: F401  (registers the kopf handlers)
    from corral.controller.controller import Controller, RunSettings
    from corral.controller.handlers import kopf_scope
    from corral.controller.http import make_app
    from corral.kube.client import KubeClient, load_connection
    from corral.kube.credentials import KubeconfigError
    from corral.kube.tls_buffers import shrink_tls_read_buffers

    config = load_config(args.config)
    if config is None:
        return 2
    # Before the first connection, ours or kopf's: each would hold a 256 KiB read buffer.
    shrink_tls_read_buffers()
    # The modules just imported live as long as the process: the collector need never
    # walk them again (fewer objects per full collection while sessions come and go).
    gc.freeze()
    # Watch events and answers are parsed into thousands of short-lived dicts, freed by
    # reference counting; collecting the young generation every 700 of them only walked
    # the ones still in use (1,000 sessions: 0.40 CPU-s of collections in a burst, 0.16
    # with this; peak RSS about 1 MB more).
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD)
    namespace = own_namespace(dict(os.environ))
    if namespace is not None:
        port = args.service_port or args.port
        config = config.in_cluster_activity(namespace, args.service_name, port)
    log = logging.getLogger("corral.operator")
    if config.activity_url:
        log.info("runners report activity to %s", config.activity_url)
    else:
        log.warning(
            "no activity URL (out of cluster, and the config sets no activityUrl): Hybrid "
            "sessions are not scaled down when idle; see their ActivityReports condition"
        )
    try:
        connection = load_connection(args.kubeconfig)
    except KubeconfigError as error:
        log.error("%s", error)  # the file and what is wrong with it
        return 2
    client = KubeClient(connection, max_connections=max(64, args.workers))
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    settings = RunSettings(
        workers=args.workers,
        leader_election=not args.no_leader_election,
        lease_namespace=args.lease_namespace or config.namespace,
        lease_name=args.lease_name,
        identity=identity,
        lease_seconds=args.lease_seconds,
        renew_seconds=args.renew_seconds,
        namespaces=tuple(args.namespace),
    )
    controller = Controller(config, client, settings)
    runner = web.AppRunner(make_app(controller), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    log.info(
        "operator %s serving health, metrics and activity on %s:%d", identity, args.host, args.port
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background = asyncio.create_task(controller.run(), name="controller")
    clusterwide, kopf_namespaces = kopf_scope(args.namespace)

    async def run_kopf() -> None:
        await kopf.operator(
            clusterwide=clusterwide,
            namespaces=kopf_namespaces,
            memo=kopf.Memo(controller=controller),
            standalone=True,
            stop_flag=stop,
        )
        # kopf returns (rather than raising) only when asked to stop: by our flag, or by
        # SIGTERM/SIGINT through the signal handlers it installs over ours. Either way a
        # requested stop, exit 0; found when every graceful shutdown exited 1.
        stop.set()

    kopf_task = asyncio.create_task(run_kopf(), name="kopf")
    code = await supervise([background, kopf_task], stop)
    stop.set()
    background.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await background
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(kopf_task, 10)
    await runner.cleanup()
    await controller.reconciler.events.close()
    await client.close()
    return code
