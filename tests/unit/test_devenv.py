"""`corral up`'s pure parts: the model choice, the examples fitted to the real node and
judged ready, the chart values, what it prints next, and the startup probe's wait."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from corral import dev, probe
from corral.cluster import node
from corral.cluster.layout import Layout
from corral.devenv import examples, install, model, relay

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def test_without_a_key_the_fake_model_and_a_fake_key() -> None:
    choice = model.choose_model({})
    assert not choice.real and choice.upstream is None
    assert choice.base_url == f"http://{node.OUTSIDE_IP}:{model.MODEL_PORT}"
    assert choice.api_key == model.FAKE_KEY
    assert "FAKE" in choice.describe()
    assert not model.choose_model({"ANTHROPIC_API_KEY": "  "}).real


def test_with_a_key_the_real_api_through_the_relay() -> None:
    choice = model.choose_model({"ANTHROPIC_API_KEY": "sk-ant-real"})
    assert choice.real and choice.upstream == model.REAL_API
    assert choice.api_key == "sk-ant-real"
    # The same address for pods either way: the relay serves where the fake would.
    assert choice.base_url == model.choose_model({}).base_url
    assert "sk-ant-real" not in choice.describe()
    assert "model-relay" in model.argv(choice) and "fake-anthropic" in model.argv(
        model.choose_model({})
    )


def test_examples_fitted_to_the_real_node() -> None:
    docs = examples.load(EXAMPLES_DIR)
    assert [d["metadata"]["name"] for d in docs] == [
        "fizzbuzz",
        "docs-assistant",
        "repo-janitor",
        "review-team",
    ]
    for doc in docs:
        fitted = examples.fit_to_real_node(doc)
        spec = fitted["spec"]
        small = examples.SMALL_SHARED if spec["pattern"] == "Shared" else examples.SMALL
        assert spec["resources"] == small
        # Only the resources change; the original is left as it was.
        assert {k: v for k, v in spec.items() if k != "resources"} == {
            k: v for k, v in doc["spec"].items() if k != "resources"
        }
        assert doc["spec"]["resources"] != small
    # Together they fit a 2-CPU node.
    cpus = sum(
        float(examples.fit_to_real_node(d)["spec"]["resources"]["cpu"].rstrip("m")) / 1000
        for d in docs
    )
    assert cpus <= 1.0


def _session(pattern: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "spec": {"pattern": pattern}, "status": status}


def test_ephemeral_is_ready_when_succeeded_with_a_result() -> None:
    assert not examples.judge(_session("Ephemeral", phase="Running", numTurns=2)).ready
    done = examples.judge(
        _session("Ephemeral", phase="Succeeded", numTurns=2, result={"subtype": "success"})
    )
    assert done.ready and "success" in done.state
    failed = examples.judge(
        _session(
            "Ephemeral",
            phase="Failed",
            conditions=[{"type": "Ready", "status": "False", "message": "pod evicted"}],
        )
    )
    assert failed.failed and not failed.ready and "pod evicted" in failed.state


def test_others_are_ready_when_running_with_a_turn_taken() -> None:
    assert not examples.judge(_session("Hybrid", phase="Running", numTurns=0)).ready
    assert not examples.judge(_session("Shared", phase="Pending")).ready
    assert not examples.judge({"metadata": {"name": "s"}, "spec": {"pattern": "Shared"}}).ready
    assert examples.judge(_session("LongRunning", phase="Running", numTurns=1)).ready


def test_kwok_examples_are_ready_with_their_pod() -> None:
    assert examples.judge_kwok(_session("Ephemeral", phase="Running", podName="p")).ready
    assert not examples.judge_kwok(_session("Ephemeral", phase="Running")).ready
    assert examples.judge_kwok(_session("Hybrid", phase="Idle")).ready
    assert not examples.judge_kwok(_session("LongRunning", phase="Idle")).ready


def test_chart_values_put_everything_on_the_real_node(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path, ports={"apiserver": 6443}, real_node=True)
    values = install.chart_values(layout, model.choose_model({}))
    selector = {node.NODE_LABEL: "true"}
    assert values["nodeSelector"] == selector and values["config"]["nodeSelector"] == selector
    assert values["networkPolicy"]["apiServer"]["ports"] == [6443]
    # The key goes to the gateway's model proxy only: no session namespace holds it.
    proxy = values["gateway"]["modelProxy"]
    assert proxy["enabled"] and proxy["upstreamUrl"] == model.choose_model({}).base_url
    assert "runnerEnv" not in values["config"]
    assert "defaultAnthropicBaseUrl" not in values["config"]
    secret = install.model_key_secret(model.choose_model({"ANTHROPIC_API_KEY": "sk-ant-x"}))
    assert secret["stringData"] == {"ANTHROPIC_API_KEY": "sk-ant-x"}
    assert secret["metadata"]["namespace"] == install.OPERATOR_NAMESPACE
    assert proxy["apiKeySecret"]["name"] == secret["metadata"]["name"]


def test_next_steps_name_the_user_kubeconfig_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_STATE_DIR", str(tmp_path))
    layout = Layout(root=tmp_path, ports={"apiserver": 6443}, real_node=True)
    text = dev.next_steps(layout, tmp_path / "user.kubeconfig", model.choose_model({}))
    assert f"export KUBECONFIG={tmp_path / 'user.kubeconfig'}" in text
    assert "corral ls -A" in text and "corral send demo/docs-assistant" in text
    assert f"CORRAL_STATE_DIR={tmp_path} corral down" in text
    assert "ANTHROPIC_API_KEY=" in text  # how to switch to the real model
    real = dev.next_steps(layout, None, model.choose_model({"ANTHROPIC_API_KEY": "k"}))
    assert "ANTHROPIC_API_KEY=" not in real and "corral ls" not in real


@pytest.mark.parametrize(
    ("line", "about"),
    [
        (
            "default Node/corral-node CgroupV1: cgroup v1 support is in maintenance mode",
            "this machine",
        ),
        (
            'corral-system Pod/corral-1 FailedMount: MountVolume.SetUp failed for volume "config"'
            " : failed to sync configmap cache: timed out waiting for the condition",
            "the kubelet's first mount, retried",
        ),
        (
            "default Endpoints/kubernetes FailedToCreateEndpoint: Failed to create endpoint"
            ' for service default/kubernetes: endpoints "kubernetes" already exists',
            "the control plane",
        ),
        ("default Service/x ClusterIPNotAllocated: not allocated; repairing", "the control plane"),
        (
            "demo Pod/repo-janitor-d8507244 FailedScheduling: running PreFilter plugin"
            ' "VolumeBinding": error getting PVC "demo/repo-janitor-state": could not find'
            ' v1.PersistentVolumeClaim "demo/repo-janitor-state"',
            "the scheduler's volume cache, retried",
        ),
        ("demo Pod/x FailedScheduling: 0/3 nodes are available", None),
        # A claim that is really missing is Corral's to explain.
        (
            'demo Pod/x FailedScheduling: persistentvolumeclaim "x-state" not found',
            None,
        ),
        # A mount that fails for another reason is Corral's to explain.
        ('demo Pod/x FailedMount: MountVolume.SetUp failed: secret "x" not found', None),
    ],
)
def test_warnings_not_about_corral_are_told_apart(line: str, about: str | None) -> None:
    assert install.not_corrals(line) == about


def test_kwok_when_asked(tmp_path: Path) -> None:
    assert dev.real_node_blocker(True, tmp_path) == "--kwok was given"


class _Handler(BaseHTTPRequestHandler):
    statuses: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Any:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_probe_waits_for_readiness(server: Any) -> None:
    port = server.server_address[1]
    _Handler.statuses = {"/readyz": 503, "/healthz": 200}
    threading.Timer(0.5, lambda: _Handler.statuses.update({"/readyz": 200})).start()
    assert probe.wait_ready(port, "/readyz", "/healthz", within=10, interval=0.05)


def test_probe_at_the_deadline_alive_is_enough_and_nothing_fails(server: Any) -> None:
    port = server.server_address[1]
    _Handler.statuses = {"/readyz": 503, "/healthz": 200}
    assert probe.wait_ready(port, "/readyz", "/healthz", within=0.3, interval=0.05)
    _Handler.statuses = {"/readyz": 503, "/healthz": 500}
    assert not probe.wait_ready(port, "/readyz", "/healthz", within=0.3, interval=0.05)
    server.shutdown()
    server.server_close()
    assert not probe.wait_ready(port, "/readyz", "/healthz", within=0.3, interval=0.05)


def test_relay_drops_hop_headers() -> None:
    kept = relay.forwarded_headers(
        {"Host": "a", "Connection": "close", "x-api-key": "k", "Transfer-Encoding": "chunked"}
    )
    assert kept == {"x-api-key": "k"}


async def test_relay_forwards_requests_and_streams_answers() -> None:
    seen: list[tuple[str, str, str | None, bytes]] = []

    async def upstream_messages(request: web.Request) -> web.StreamResponse:
        seen.append(
            (
                request.method,
                request.path_qs,
                request.headers.get("x-api-key"),
                await request.read(),
            )
        )
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)
        for chunk in (b"data: one\n\n", b"data: two\n\n"):
            await answer.write(chunk)
        return answer

    upstream = web.Application()
    upstream.router.add_post("/v1/messages", upstream_messages)
    up_runner = web.AppRunner(upstream)
    await up_runner.setup()
    up_site = web.TCPSite(up_runner, "127.0.0.1", 0)
    await up_site.start()
    up_port = up_runner.addresses[0][1]

    sock = relay.listen_socket("127.0.0.1", 0, None)
    runner = web.AppRunner(relay.relay_app(f"http://127.0.0.1:{up_port}"))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    try:
        from aiohttp import ClientSession

        async with (
            ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{port}/v1/messages?beta=true",
                data=b'{"x": 1}',
                headers={"x-api-key": "sk-ant-k"},
            ) as answer,
        ):
            body = await answer.read()
        assert answer.status == 200 and body == b"data: one\n\ndata: two\n\n"
        assert answer.headers["content-type"] == "text/event-stream"
        assert seen == [("POST", "/v1/messages?beta=true", "sk-ant-k", b'{"x": 1}')]
    finally:
        await runner.cleanup()
        await up_runner.cleanup()
        await asyncio.sleep(0)


def test_the_build_note_says_how_long_the_build_takes() -> None:
    assert dev.build_note([], code_only=False) is None
    code = dev.build_note(["runner image", "operator image"], code_only=True)
    assert code is not None and code.startswith("Rebuilding the runner image")
    assert "runner image, operator image" in code and "15-25" not in code
    first = dev.build_note(["etcd", "kube-apiserver"], code_only=False)
    assert first is not None and first.startswith("First run") and "15-25 minutes" in first
