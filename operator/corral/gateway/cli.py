"""`corral gateway`: the session gateway server (one authenticated door into every session)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="run the session gateway (auth, routing, wake on request)",
        description="Serve /sessions/NAMESPACE/NAME/... for every AgentSession: authenticate "
        "with TokenReview, authorize with SubjectAccessReview on agentsessions/connect, wake "
        "idle Hybrid sessions and forward to the session's runner.",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        required=True,
        help="file with the key shared with the operator (per-session credentials)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="serve only sessions of this namespace (repeatable; globs allowed) (default: all)",
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s, all)"
    )
    parser.add_argument("--port", type=int, default=8080, help="session traffic port")
    parser.add_argument("--admin-port", type=int, default=8081, help="health and metrics port")
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=60.0,
        help="how long a request waits for a sleeping session to wake",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per user")
    parser.add_argument("--burst", type=int, default=40, help="request burst per user")
    parser.add_argument("--max-streams", type=int, default=32, help="open streams per user")
    parser.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=10.0,
        help="how long token and access decisions are cached",
    )
    parser.add_argument(
        "--egress-port",
        type=int,
        default=0,
        help="port of the egress proxy for session pods (HTTP CONNECT and plain HTTP); "
        "0: no egress proxy (default: %(default)s)",
    )
    parser.add_argument(
        "--egress-allow",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain every session may reach through the egress proxy, e.g. "
        "api.anthropic.com:443 (repeatable; same syntax as spec.network.allowedDomains) "
        "(default: none)",
    )
    parser.add_argument(
        "--egress-hosts-file",
        type=Path,
        help="YAML map of name -> address(es) the egress proxy uses instead of DNS for those "
        "names (tests, pinned names); other names use the system resolver",
    )
    parser.add_argument(
        "--egress-idle-seconds",
        type=float,
        default=300.0,
        help="close an egress tunnel after this long without a byte either way "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the operator's configuration file; its modelProxy section turns the model "
        "proxy on (listening on modelProxy.port)",
    )
    parser.add_argument(
        "--model-key-file",
        type=Path,
        help="file with the real Anthropic API key (default: modelProxy.keyFile)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=120.0,
        help="close a client connection after this long without a request in progress (one "
        "that sends nothing or dribbles its request); open streams are not idle "
        "(default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from corral import logs

    logs.configure(getattr(logging, args.log_level.upper(), logging.INFO))
    _raise_open_files_limit()
    asyncio.run(_main(args))
    return 0


def _raise_open_files_limit() -> None:
    """Up to the hard limit: an egress tunnel holds six descriptors (two sockets, two
    pipes), so the usual soft limit of 1,024 would end the proxy at about 170 tunnels, far
    below its own limits (512 per session, 8,192 in all)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(args: argparse.Namespace) -> None:
    from aiohttp import web

    from corral.config import load_activity_keys
    from corral.gateway.auth import Reviewer
    from corral.gateway.directory import Directory
    from corral.gateway.metrics import GatewayMetrics
    from corral.gateway.server import Gateway, GatewaySettings, app_runner
    from corral.kube.client import KubeClient, load_connection
    from corral.kube.informer import Informer
    from corral.kube.tls_buffers import shrink_tls_read_buffers
    from corral.render.meta import MANAGED_BY_LABEL, MANAGER

    # Before the first connection: each of the model proxy's streams to a TLS upstream would
    # hold a 256 KiB read buffer for as long as the reply lasts.
    shrink_tls_read_buffers()
    # The operator's key file (one key per line; the first is the one that signs).
    key = load_activity_keys(str(args.key_file))[0]
    kube = KubeClient(load_connection(args.kubeconfig))
    metrics = GatewayMetrics()
    directory = Directory(kube)
    egress = _egress_proxy(args, directory.events, metrics)
    on_session, on_pod = directory.on_session, directory.on_pod
    if egress is not None:
        on_session = _both(directory.on_session, egress.index.on_session)
        on_pod = _both(directory.on_pod, egress.index.on_pod)
    informers = [
        Informer(kube, "AgentSession", "", on_session, args.namespace),
        Informer(kube, "Pod", f"{MANAGED_BY_LABEL}={MANAGER}", on_pod, args.namespace),
    ]
    gateway = Gateway(
        Reviewer(kube, metrics, ttl_seconds=args.auth_cache_seconds),
        directory,
        key,
        metrics,
        GatewaySettings(
            hold_seconds=args.hold_seconds,
            rate_per_second=args.rate,
            burst=args.burst,
            max_streams_per_user=args.max_streams,
        ),
    )
    tasks = [asyncio.create_task(informer.run()) for informer in informers]
    model_app = None
    model_port = 0
    if args.config is not None:
        from corral.config import OperatorConfig
        from corral.gateway.model_proxy import build_model_proxy

        operator_config = OperatorConfig.read(args.config)
        proxy_config = operator_config.model_proxy
        if proxy_config is not None:
            model_port = proxy_config.port
            proxy, meter = build_model_proxy(
                proxy_config, directory, key, kube, metrics.registry, args.model_key_file,
                operator_config.namespace,
            )  # fmt: skip
            model_app = proxy.app()
            tasks.append(asyncio.create_task(meter.run()))

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        synced = all(i.synced.is_set() for i in informers)
        return web.json_response({"ready": synced}, status=200 if synced else 503)

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    admin = web.Application()
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", prometheus)
    apps = [gateway.app(), admin] + ([model_app] if model_app is not None else [])
    runners = [app_runner(app, args.idle_seconds) for app in apps]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], args.host, args.port).start()
    await web.TCPSite(runners[1], args.host, args.admin_port).start()
    egress_server = await egress.start(args.host, args.egress_port) if egress else None
    if model_app is not None:
        await web.TCPSite(runners[2], args.host, model_port).start()
    logging.getLogger("corral.gateway").info(
        "gateway serving",
        extra={
            "fields": {
                "port": args.port,
                "admin_port": args.admin_port,
                "egress_port": args.egress_port or None,
                "model_port": model_port,
            }
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopped, *tasks]:
        task.cancel()
    if egress_server is not None and egress is not None:
        egress_server.close()
        await egress.reporter.close()
    for runner in runners:
        await runner.cleanup()
    # The meter writes what it still holds when cancelled: let it, before the client goes.
    await asyncio.gather(*tasks, return_exceptions=True)
    await directory.events.close()
    await kube.close()
    for task in done:
        if task is not stopped and not task.cancelled() and task.exception() is not None:
            # An informer that ended is a gateway that no longer sees sessions: exit non-zero
            # so that Kubernetes restarts it.
            raise SystemExit(f"gateway informer failed: {task.exception()}")


def _both(first: Any, second: Any) -> Any:
    def handle(kind: str, body: dict[str, Any]) -> None:
        first(kind, body)
        second(kind, body)

    return handle


def _egress_proxy(args: argparse.Namespace, events: Any, metrics: Any) -> Any:
    """The egress proxy of `--egress-port`, or None."""
    if not args.egress_port:
        return None
    import yaml

    from corral.gateway.egress import EgressMetrics, EgressProxy, EgressSettings, Resolver
    from corral.gateway.egress_index import Caller, EgressIndex
    from corral.gateway.egress_policy import parse_domain_rule
    from corral.gateway.egress_report import RefusalReporter, refusal_event

    static: dict[str, list[str]] = {}
    if args.egress_hosts_file is not None:
        loaded = yaml.safe_load(args.egress_hosts_file.read_text(encoding="utf-8")) or {}
        for name, addresses in dict(loaded).items():
            static[str(name).lower()] = (
                [str(a) for a in addresses] if isinstance(addresses, list) else [str(addresses)]
            )

    async def post(caller: Caller, message: str) -> None:
        await events.post(refusal_event(caller, message))

    return EgressProxy(
        EgressIndex(extra_domains=[parse_domain_rule(d) for d in args.egress_allow]),
        EgressMetrics(metrics.registry),
        RefusalReporter(post),
        Resolver(static),
        EgressSettings(idle_seconds=args.egress_idle_seconds),
    )
