"""Model-proxy overhead: a streamed Messages API reply straight from the fake model vs
through `corral gateway`'s model proxy (credential check, real key, metering), one run,
interleaved.

    python -m bench.model_proxy                  # 300 messages
    python -m bench.model_proxy --messages 50

Time to first byte of the SSE answer (the model's `message_start`) and to its end, p50 and
p99, for each path; the proxy's added time is the difference. The fake model and the
gateway are real subprocesses (`corral fake-anthropic`, `corral gateway --config`); the
session and its pod are real API objects on the local control plane (the pod's address is
loopback, which is where this client calls from). Results: docs/benchmarks/model-proxy.json
and docs/model-proxy-benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bench.paired import side_by_side
from corral.api.crd import crd_yaml
from corral.api.tokens import model_credential
from corral.cluster import control_plane, pki
from corral.testing.anthropic_script import TextStep
from corral.testing.gateway import World, free_port, make_namespace

ROOT = Path(__file__).resolve().parent.parent
KEY = os.urandom(24).hex().encode()
REPLY = "a reply of some length, cut by the fake into sixteen-character deltas " * 4


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "corral.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


async def _wait(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def _message(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, float]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "benchmark"}]}  # fmt: skip
    started = time.perf_counter()
    first = None
    async with http.post(url, json=body, headers=headers) as r:
        assert r.status == 200, (r.status, await r.text())
        async for _ in r.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
    assert first is not None
    return first * 1000, (time.perf_counter() - started) * 1000


async def overhead(direct: str, proxy: str, credential: str, messages: int) -> dict[str, Any]:
    headers = {"x-api-key": credential, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        return await side_by_side(
            lambda: _message(http, direct, headers),
            lambda: _message(http, proxy, headers),
            proxied_label="proxy",
            end_label="end",
            warmup=10,
            rounds=messages,
        )


async def main(args: argparse.Namespace, layout: control_plane.Layout) -> dict[str, Any]:
    kubeconfig = layout.kubeconfig(pki.ADMIN)
    control_plane.kubectl(
        layout, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_yaml()
    )
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    namespace = f"bench-mp-{uuid.uuid4().hex[:5]}"
    make_namespace(k8s.CoreV1Api(api), namespace)
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-mp-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        world = World(api, namespace, 1)
        uid = world.create_session("bench")
        world.set_status("bench", {"phase": "Running"})
        world.create_ready_pod("bench", uid)
        fake_port, gw_port, admin_port, model_port = (free_port() for _ in range(4))
        procs.append(_spawn(["fake-anthropic", "--port", str(fake_port)], workdir / "fake.log"))
        fake = f"http://127.0.0.1:{fake_port}"
        await _wait(f"{fake}/_fake/state")
        script = {"default": TextStep(text=REPLY).model_dump(mode="json")}
        async with aiohttp.ClientSession() as http, http.post(
            f"{fake}/_fake/script", json=script
        ) as r:  # fmt: skip
            assert r.status == 200
        (workdir / "session.key").write_bytes(KEY)
        (workdir / "model.key").write_text("sk-ant-bench")
        config = {
            "gateway": {"namespace": "x", "podLabels": {"app": "gw"}},
            "modelProxy": {"url": "http://unused:1", "port": model_port, "upstreamUrl": fake,
                           "requestsPerMinute": 0, "tokensPerMinute": 0},
        }  # fmt: skip
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        procs.append(_spawn(
            ["gateway", "--kubeconfig", str(kubeconfig), "--key-file",
             str(workdir / "session.key"), "--namespace", namespace, "--host", "127.0.0.1",
             "--port", str(gw_port), "--admin-port", str(admin_port), "--config",
             str(workdir / "config.yaml"), "--model-key-file", str(workdir / "model.key"),
             "--log-level", "WARNING"], workdir / "gateway.log",
        ))  # fmt: skip
        await _wait(f"http://127.0.0.1:{admin_port}/readyz")
        await asyncio.sleep(1)
        credential = model_credential(KEY, namespace, "bench", uid)
        results = await overhead(
            f"{fake}/v1/messages?beta=true",
            f"http://127.0.0.1:{model_port}/v1/messages?beta=true",
            credential,
            args.messages,
        )
        print({k: v for k, v in results.items() if k != "raw"}, flush=True)
        return {"command": " ".join(["python -m bench.model_proxy", *sys.argv[1:]]),
                "note": args.note, "proxy": results}  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
        k8s.CoreV1Api(api).delete_namespace(namespace, propagation_policy="Background")


def report(results: dict[str, Any]) -> str:
    p = results["proxy"]
    rows = [
        ("time to first byte (message_start)", "first"),
        ("time to the end of the stream", "end"),
    ]
    lines = [
        "# Model-proxy benchmarks",
        "",
        "Generated by `bench/model_proxy.py` (raw numbers: "
        "[benchmarks/model-proxy.json](benchmarks/model-proxy.json)).",
        "",
        f"Command: `{results['command']}`. {results['note']}".rstrip(),
        "",
        f"{p['messages']} streamed replies (about 25 SSE events each) from the fake model, "
        "straight and through `corral gateway`'s model proxy (credential check, real key, "
        "usage metering), interleaved, one at a time, on loopback. Target: added p50 "
        "≤ 2 ms.",
        "",
        "| | direct p50 | proxy p50 | added p50 | direct p99 | proxy p99 | added p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, kind in rows:
        lines.append(
            f"| {label} | {p[f'direct_{kind}_p50_ms']:.2f} ms | {p[f'proxy_{kind}_p50_ms']:.2f} ms"
            f" | {p[f'added_{kind}_p50_ms']:.2f} ms | {p[f'direct_{kind}_p99_ms']:.2f} ms"
            f" | {p[f'proxy_{kind}_p99_ms']:.2f} ms | {p[f'added_{kind}_p99_ms']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks" / "model-proxy.json"
    )
    parser.add_argument("--note", default="", help="a line about the run for the report")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    with control_plane.running() as cluster:
        outcome = asyncio.run(main(arguments, cluster))
    arguments.out.write_text(json.dumps(outcome, indent=1) + "\n")
    (ROOT / "docs" / "model-proxy-benchmarks.md").write_text(report(outcome))
