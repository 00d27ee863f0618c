"""What the API server's JSON costs the operator per session: `json.loads` and `json.dumps`
against what its Kubernetes client uses (`corral.kube.client.decode_json`, `encode_json`).

    python -m bench.json_decode --sessions 50 --repeats 30

On the default cluster, in a fresh namespace on KWOK nodes: `--sessions` LongRunning
sessions are created and, for each, the children the operator's own render functions make
(pod, Service, NetworkPolicy), while watches of the namespace's sessions, pods, Services and
NetworkPolicies keep their raw lines until every pod is Running. The create answers are kept
raw too. These are the bytes the operator's client decodes for a session (the API server's
managedFields, KWOK's status and all): its watch events and the answers to its three creates
and its status patch, for which the session's create answer (the session's body too) stands
in. kopf decodes the session events itself (with `json.loads`), listed apart. Each decoder
then decodes all of them, and each encoder writes the bodies created, `--repeats` times,
alternately; the figure is the best pass's time per session, a property of the code and
the bytes rather than of the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.kube import client_for, kwok_nodes
from bench.report import this_command
from bench.run import machine
from bench.scenarios import drop_namespace, make_namespace, session_manifest
from corral.api.crd import crd_yaml
from corral.api.v1alpha1 import AgentSession
from corral.cluster import control_plane, pki
from corral.kube.client import KubeClient, decode_json, encode_json, resource_path
from corral.render import render_children
from corral.testing.operator import kwok_operator_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "json-decode.json"
WATCHED = ("AgentSession", "Pod", "Service", "NetworkPolicy")


async def _record(client: KubeClient, kind: str, namespace: str, lines: list[bytes]) -> None:
    forever = aiohttp.ClientTimeout(total=None, sock_read=None)
    path = resource_path(kind, namespace)
    async with client._session.get(path, params={"watch": "1"}, timeout=forever) as response:
        async for line in response.content:
            if line.strip():
                lines.append(line)


async def _post_raw(client: KubeClient, manifest: dict[str, Any], namespace: str) -> bytes:
    path = resource_path(manifest["kind"], namespace)
    async with client._session.post(path, json=manifest) as response:
        raw = await response.read()
        if response.status >= 300:
            raise RuntimeError(f"{manifest['kind']}: {response.status} {raw[:300]!r}")
        return raw


def _all_running(pod_lines: list[bytes], sessions: int) -> bool:
    running = {
        event["object"]["metadata"]["name"]
        for event in map(json.loads, pod_lines)
        if event["object"].get("status", {}).get("phase") == "Running"
    }
    return len(running) >= sessions


async def record(kubeconfig: Path, sessions: int) -> dict[str, list[bytes]]:
    """The raw bytes of `sessions` sessions' watch events and create answers, by source."""
    client = client_for(kubeconfig)
    namespace = f"json-bench-{time.strftime('%H%M%S')}"
    await make_namespace(client, namespace)
    recorded: dict[str, list[bytes]] = {kind: [] for kind in (*WATCHED, "answers", "bodies")}
    watches = [
        asyncio.create_task(_record(client, kind, namespace, recorded[kind])) for kind in WATCHED
    ]
    config = kwok_operator_config(namespace)
    try:
        await asyncio.sleep(0.5)  # the watches are open before the first create
        for index in range(sessions):
            manifest = session_manifest(f"s{index}")
            raw = await _post_raw(client, manifest, namespace)
            recorded["answers"].append(raw)
            session = AgentSession.model_validate(json.loads(raw))
            children = render_children(session, config, 0).all()
            for child in children:
                recorded["answers"].append(await _post_raw(client, child, namespace))
            recorded["bodies"].extend(json.dumps(m).encode() for m in (manifest, *children))
        deadline = time.monotonic() + 120
        while not _all_running(recorded["Pod"], sessions):
            if time.monotonic() > deadline:
                raise TimeoutError("the pods were not all Running within 120 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # the last events of the last pods
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await drop_namespace(client, namespace, limit=0)
        await client.close()
    return recorded


def best_pass(convert: Callable[[Any], Any], items: list[Any]) -> float:
    started = time.perf_counter()
    for item in items:
        convert(item)
    return time.perf_counter() - started


def ms_per_session(
    converters: dict[str, Callable[[Any], Any]], items: list[Any], sessions: int, repeats: int
) -> dict[str, float]:
    """Each converter's best pass over `items`, alternately, in ms per session."""
    passes: dict[str, list[float]] = {name: [] for name in converters}
    for _ in range(repeats):
        for name, convert in converters.items():
            passes[name].append(best_pass(convert, items))
    return {name: min(times) / sessions * 1e3 for name, times in passes.items()}


def measure(recorded: dict[str, list[bytes]], sessions: int, repeats: int) -> dict[str, Any]:
    client_decodes = [
        *recorded["Pod"],
        *recorded["Service"],
        *recorded["NetworkPolicy"],
        *recorded["answers"],
    ]
    for blob in client_decodes:  # both decoders read the same values
        assert decode_json(blob) == json.loads(blob)
    decoders: dict[str, Callable[[Any], Any]] = {"json.loads": json.loads, "client": decode_json}
    per_session = ms_per_session(decoders, client_decodes, sessions, repeats)
    kopf_lines = recorded["AgentSession"]
    kopf: dict[str, Callable[[Any], Any]] = {"json.loads": lambda b: json.loads(b.decode())}
    kopf_per_session = ms_per_session(kopf, kopf_lines, sessions, repeats)["json.loads"]
    bodies = [json.loads(blob) for blob in recorded["bodies"]]
    encoders = {"json.dumps": lambda body: json.dumps(body).encode(), "client": encode_json}
    encode_per_session = ms_per_session(encoders, bodies, sessions, repeats)
    return {
        "sessions": sessions,
        "repeats": repeats,
        "client_decodes_per_session": len(client_decodes) / sessions,
        "client_bytes_per_session": sum(map(len, client_decodes)) / sessions,
        "pod_events_per_session": len(recorded["Pod"]) / sessions,
        "pod_event_bytes_median": statistics.median(map(len, recorded["Pod"])),
        "client_ms_per_session": per_session,
        "client_ratio": per_session["client"] / per_session["json.loads"],
        "bodies_per_session": len(bodies) / sessions,
        "encode_ms_per_session": encode_per_session,
        "encode_ratio": encode_per_session["client"] / encode_per_session["json.dumps"],
        "kopf_session_events_per_session": len(kopf_lines) / sessions,
        "kopf_json_loads_ms_per_session": kopf_per_session,
    }


async def main(args: argparse.Namespace, layout: control_plane.Layout) -> None:
    control_plane.kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_yaml()
    )
    with kwok_nodes(layout, 2):
        recorded = await record(layout.kubeconfig(pki.ADMIN), args.sessions)
    result = {
        "machine": machine(),
        "command": this_command(),
        **measure(recorded, args.sessions, args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()  # first: `--help` or a wrong flag starts no cluster
    with control_plane.running() as cluster:
        asyncio.run(main(arguments, cluster))
