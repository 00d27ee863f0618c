"""The user CLI and corral.client against the real API server, the gateway (in process, on
loopback) and a real runner process with its built-in fake model.

The user is a ServiceAccount with a token kubeconfig: RBAC on agentsessions (list, create,
patch, delete) and on agentsessions/connect, nothing else. The CLI is pointed at the
gateway's URL directly (CORRAL_GATEWAY_URL): the API server's service proxy needs the
gateway running as a pod behind a Service, which this cluster (no kubelet) cannot run.

No operator watches this module's namespace: the tests play the operator's part (pods
pointing at the loopback runner, status written here), as tests/integration/test_gateway_routing.py.
`chat` runs under a pseudo-terminal (pexpect), the way a person runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml
from kubernetes import client

from corral.api import runtime
from corral.client import AsyncClient, Client
from corral.gateway.auth import Reviewer
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.server import Gateway, GatewaySettings
from corral.kube.client import KubeClient, load_connection
from corral.testing.gateway import (
    GROUP,
    PLURAL,
    VERSION,
    LocalRunner,
    World,
    scratch_namespace,
    start_local_runner,
    watched_directory,
)
from corral.testing.kube import wait_for
from corral.testing.serving import serving
from corral.testing.tcp_proxy import CuttableProxy
from testrun import RUN_ID

pytestmark = pytest.mark.integration
KEY = b"client-test-key-" + b"0" * 32
PATIENCE = 120  # seconds: a generous bound for anything on the shared machine


@pytest.fixture(scope="module")
def ns(kubeconfig: Path, crd: None, api_client: client.ApiClient) -> Iterator[str]:
    with scratch_namespace(client.CoreV1Api(api_client), f"cli{RUN_ID}") as name:
        yield name


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRunner]:
    started = start_local_runner(
        tmp_path_factory.mktemp("cli-runner"),
        {"pattern": "LongRunning"},
        # One retry of a failing model API, so a failure ends a message quickly.
        {runtime.ENV_GATEWAY_CREDENTIAL: "credential-of-another-session",
         "CLAUDE_CODE_MAX_RETRIES": "1"},
    )  # fmt: skip
    yield started
    started.stop()


@pytest.fixture(scope="module")
def world(api_client: client.ApiClient, ns: str, runner: LocalRunner) -> World:
    return World(api_client, ns, runner.port)


def fake_model_url(runner: LocalRunner) -> str:
    found = re.search(r"http://127\.0\.0\.1:\d+", runner.log_path.read_text())
    assert found, "the runner did not log its fake model's URL"
    return found.group(0)


def reset_fake(runner: LocalRunner) -> None:
    request = urllib.request.Request(fake_model_url(runner) + "/_fake/reset", b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def script_fake(runner: LocalRunner, *steps: dict[str, Any]) -> None:
    request = urllib.request.Request(
        fake_model_url(runner) + "/_fake/script",
        json.dumps({"steps": list(steps)}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


@dataclass
class GatewayThread:
    """The gateway serving from a thread of its own, so tests can block on CLI processes."""

    url: str
    server: Gateway

    def view(self, namespace: str, name: str) -> Any:
        return self.server.directory.sessions.get((namespace, name))


@pytest.fixture(scope="module")
def gateway(kubeconfig: Path, world: World) -> Iterator[GatewayThread]:
    """The gateway, serving from a thread of its own while tests block on CLI processes."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        kube = KubeClient(load_connection(str(kubeconfig)))
        metrics = GatewayMetrics()
        async with watched_directory(kube, world.namespace) as directory:
            server = Gateway(
                Reviewer(kube, metrics), directory, KEY, metrics, GatewaySettings(hold_seconds=60)
            )
            async with serving(server.app()) as url:
                stop = asyncio.Event()
                holder.update(url=url, stop=stop, loop=asyncio.get_running_loop(), server=server)
                ready.set()
                await stop.wait()
        await kube.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(60), "the gateway did not start"
    yield GatewayThread(str(holder["url"]), holder["server"])
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(30)


@pytest.fixture(scope="module")
def user_kubeconfig(
    kubeconfig: Path, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A token kubeconfig for a user who may use sessions in this namespace, and no more."""
    token = world.user("user", None, ["create", "get"])
    world.rbac.create_namespaced_role(
        world.namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="user-sessions"),
            rules=[client.V1PolicyRule(
                api_groups=[GROUP], resources=[PLURAL],
                verbs=["get", "list", "watch", "create", "patch", "delete"],
            )],
        ),
    )  # fmt: skip
    world.rbac.create_namespaced_role_binding(
        world.namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="user-sessions"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="user-sessions"),
            subjects=[client.RbacV1Subject(
                kind="ServiceAccount", name="user", namespace=world.namespace)],
        ),
    )  # fmt: skip
    admin = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path = tmp_path_factory.mktemp("user") / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "user", "user": {"token": token}}],
                "contexts": [{"name": "user", "context": {
                    "cluster": cluster["name"], "user": "user", "namespace": world.namespace}}],
                "current-context": "user",
            }
        )
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def env(
    user_kubeconfig: Path, gateway: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment of a user's shell: their kubeconfig, the gateway's URL."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_GATEWAY")}
    return base | {
        "KUBECONFIG": str(user_kubeconfig),
        "CORRAL_GATEWAY_URL": gateway.url,
        "XDG_STATE_HOME": str(tmp_path_factory.mktemp("state")),
        # pexpect does not answer prompt_toolkit's cursor position requests.
        "PROMPT_TOOLKIT_NO_CPR": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def corral(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=PATIENCE * 2,
    )  # fmt: skip


def running_session(world: World, name: str) -> None:
    """A session that is Running with a ready pod on the loopback runner."""
    uid = world.create_session(name)
    world.set_status(name, {"phase": "Running", "numTurns": 0})
    world.create_ready_pod(name, uid)


def reachable(gateway: GatewayThread, namespace: str, name: str) -> None:
    """Wait until the gateway's informers have seen the session's ready pod."""

    def serving() -> bool:
        view = gateway.view(namespace, name)
        return view is not None and view.ready_endpoint() is not None

    wait_for(serving, timeout=PATIENCE, what=f"the gateway to see {namespace}/{name} ready")


def ensure_chat(world: World, gateway: GatewayThread) -> str:
    """The Running session `chat` (made by whichever test runs first)."""
    if gateway.view(world.namespace, "chat") is None:
        running_session(world, "chat")
    reachable(gateway, world.namespace, "chat")
    return f"{world.namespace}/chat"


class Chat(pexpect.spawn):
    """`corral chat` under a pseudo-terminal; a failed expectation shows what it printed."""

    def __init__(self, env: dict[str, str], ref: str, log: Path) -> None:
        self.log = log
        super().__init__(
            sys.executable, ["-m", "corral.cli", "chat", ref], env=env, encoding="utf-8",
            timeout=PATIENCE, dimensions=(40, 200), logfile=log.open("w"),
        )  # fmt: skip

    def expect(self, pattern: Any, *args: Any, **kwargs: Any) -> int:
        try:
            return int(super().expect(pattern, *args, **kwargs))
        except pexpect.ExceptionPexpect:
            raise AssertionError(f"chat never printed {pattern!r}:\n{self.screen()}") from None

    def expect_exact(self, pattern: Any, *args: Any, **kwargs: Any) -> int:
        try:
            return int(super().expect_exact(pattern, *args, **kwargs))
        except pexpect.ExceptionPexpect:
            raise AssertionError(f"chat never printed {pattern!r}:\n{self.screen()}") from None

    def screen(self) -> str:
        self.logfile.flush()
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", self.log.read_text())[-3000:]


def spawn_chat(env: dict[str, str], ref: str, log: Path) -> Chat:
    return Chat(env, ref, log)


# --- tests ---------------------------------------------------------------------------------


def test_ls_send_and_transcript_with_nothing_but_a_token_kubeconfig(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner
) -> None:
    ref = ensure_chat(world, gateway)
    world.create_session("later", "Hybrid")
    world.set_status("later", {"phase": "Idle", "idleSince": "2020-01-01T00:00:00Z"})

    listed = corral(env, "ls")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["NAME", "PATTERN", "PHASE", "IDLE", "TURNS", "COST", "AGE"]
    assert rows[1][:5] == ["chat", "LongRunning", "Running", "-", "0"]
    assert rows[2][:4] == ["later", "Hybrid", "Idle", rows[2][3]] and rows[2][3].endswith("d")

    sent = corral(env, "send", ref, "hello from the cli")
    assert sent.returncode == 0, sent.stderr
    assert "fake reply to: hello from the cli" in sent.stdout
    assert "✓ 1 turn " in sent.stdout

    as_json = corral(env, "send", ref, "-", "--json", stdin="piped text")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.returncode == 0 and events[-1]["type"] == "result", as_json.stderr
    assert "".join(e["text"] for e in events if e["type"] == "text_delta").endswith("piped text")

    transcript = corral(env, "transcript", ref)
    assert transcript.returncode == 0, transcript.stderr
    assert "you: hello from the cli" in transcript.stdout
    assert "claude: fake reply to: hello from the cli" in transcript.stdout


def test_send_exits_with_the_result_and_refusals_are_one_line(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, kubeconfig: Path
) -> None:
    ref = ensure_chat(world, gateway)
    # A model API that stays overloaded ends the message with an error result.
    script_fake(
        runner,
        {"kind": "error", "status": 529, "times": 2, "match": "this one fails"},
    )
    failed = corral(env, "send", ref, "this one fails")
    # The conversation keeps "this one fails": later requests must not match the step.
    reset_fake(runner)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "✗" in failed.stdout

    missing = corral(env, "send", f"{world.namespace}/nosuch", "hi")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "error:" in missing.stderr and "corral ls" in missing.stderr

    # The admin kubeconfig authenticates with a client certificate: fine for the API server,
    # but there is no token to present to the gateway.
    admin = env | {"KUBECONFIG": str(kubeconfig)}
    assert corral(admin, "ls", "-n", world.namespace).returncode == 0
    cert_only = corral(admin, "send", ref, "hi")
    assert cert_only.returncode == 1
    assert "no bearer token" in cert_only.stderr and "kubectl create token" in cert_only.stderr


def test_chat_streams_interrupts_with_ctrl_c_and_leaves(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, tmp_path: Path
) -> None:
    ref = ensure_chat(world, gateway)
    chat = spawn_chat(env, ref, tmp_path / "chat.log")
    try:
        chat.expect_exact(f"connected to {ref}")
        chat.expect_exact("you>")
        chat.sendline("first question")
        # The fake echoes the user's text since its last reply (earlier tests may leave
        # some): look for the end of it.
        chat.expect_exact("fake reply to: ")
        chat.expect_exact("first question")
        chat.expect_exact("✓ 1 turn ")
        # A slow reply: Ctrl-C interrupts it, the chat goes on.
        slow = "slow " * 200
        script_fake(
            runner,
            {"kind": "text", "text": slow, "stream": {"event_delay": 0.3}, "match": "slowly"},
        )
        chat.expect_exact("you>")
        chat.sendline("take your time, slowly")
        chat.expect_exact("slow slow")
        chat.sendintr()
        chat.expect_exact("interrupting")
        chat.expect_exact("(interrupted)")
        chat.expect(["✗", "✓"])
        chat.expect_exact("you>")
        chat.sendline("still there?")
        chat.expect_exact("fake reply to: ")  # the fake echoes the interrupt note too
        chat.expect_exact("still there?")
        chat.expect_exact("✓ 1 turn ")
        # Another slow reply: two Ctrl-Cs leave, whether the second comes before the
        # interrupted reply has ended or after (at the prompt).
        script_fake(
            runner,
            {"kind": "text", "text": slow, "stream": {"event_delay": 0.3}, "match": "slowly"},
        )
        chat.expect_exact("you>")
        chat.sendline("again slowly")
        chat.expect_exact("slow slow")
        chat.sendintr()
        chat.expect_exact("interrupting")
        chat.sendintr()
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 130, chat.screen()
    # History: what was typed is kept for the arrow keys of the next chat.
    history = Path(env["XDG_STATE_HOME"]) / "corral" / "chat-history"
    assert "still there?" in history.read_text()


def test_chat_connects_again_when_its_connection_closed_between_messages(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, tmp_path: Path
) -> None:
    """A connection lost at the prompt (a gateway restart, a session gone to sleep) is made
    again when the next message is sent, and that message is answered."""
    from urllib.parse import urlsplit

    ref = ensure_chat(world, gateway)
    proxy = CuttableProxy(urlsplit(gateway.url).port or 80)
    through = env | {"CORRAL_GATEWAY_URL": f"http://127.0.0.1:{proxy.port}"}
    chat = spawn_chat(through, ref, tmp_path / "chat.log")
    try:
        chat.expect_exact(f"connected to {ref}")
        chat.expect_exact("you>")
        chat.sendline("before the cut")
        chat.expect_exact("before the cut")
        chat.expect_exact("✓ 1 turn ")
        chat.expect_exact("you>")
        proxy.cut()  # every connection reset
        proxy.heal()  # and new ones forwarded again
        chat.expect_exact("your next message connects again")
        chat.sendline("after the cut")
        chat.expect_exact("connecting again")
        chat.expect_exact("after the cut")
        chat.expect_exact("✓ 1 turn ")
        chat.expect_exact("you>")
        chat.sendeof()
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
        proxy.close()
    assert chat.exitstatus == 0, chat.screen()
    assert proxy.connections >= 2  # the first connection, and the one made again


def test_send_interrupts_its_message_on_ctrl_c(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, tmp_path: Path
) -> None:
    ref = ensure_chat(world, gateway)
    slow = "slow " * 200
    script_fake(runner, {"kind": "text", "text": slow, "stream": {"event_delay": 0.3},
                         "match": "send slowly"})  # fmt: skip
    log = tmp_path / "send.log"
    send = pexpect.spawn(
        sys.executable, ["-m", "corral.cli", "send", ref, "send slowly"], env=env,
        encoding="utf-8", timeout=PATIENCE, logfile=log.open("w"),
    )  # fmt: skip
    try:
        send.expect_exact("slow slow")
        send.sendintr()
        send.expect_exact("interrupting")
        send.expect_exact("✗")
        send.expect(pexpect.EOF)
    finally:
        send.close()
    assert send.exitstatus == 1, log.read_text()[-2000:]


def test_chat_ends_with_ctrl_d_and_uses_history(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, tmp_path: Path
) -> None:
    ref = ensure_chat(world, gateway)
    history = Path(env["XDG_STATE_HOME"]) / "corral" / "chat-history"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text("\n# 2026-01-01 00:00:00\n+remembered question\n")
    chat = spawn_chat(env, ref, tmp_path / "chat.log")
    try:
        chat.expect_exact("you>")
        chat.send("\x1b[A")  # arrow up: the last line of the history
        chat.send("\r")
        chat.expect_exact("fake reply to: ")
        chat.expect_exact("remembered question")
        chat.expect_exact("✓ 1 turn ")
        chat.expect_exact("you>")
        chat.sendcontrol("d")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


def test_chat_wakes_a_sleeping_session_visibly(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner, tmp_path: Path
) -> None:
    uid = world.create_session("sleepy", "Hybrid")
    world.set_status("sleepy", {"phase": "Idle"})
    ref = f"{world.namespace}/sleepy"

    def play_operator() -> None:
        # The operator's part on a wake annotation: a pod, then Running.
        def woken() -> bool:
            body = world.custom.get_namespaced_custom_object(
                GROUP, VERSION, world.namespace, PLURAL, "sleepy"
            )
            return bool((body["metadata"].get("annotations") or {}).get(runtime.WAKE_ANNOTATION))

        wait_for(woken, timeout=PATIENCE, what="the wake annotation")
        world.create_ready_pod("sleepy", uid)
        world.set_status("sleepy", {"phase": "Running"})

    def gateway_sees_idle() -> bool:
        view = gateway.view(world.namespace, "sleepy")
        return view is not None and view.phase == "Idle"

    wait_for(gateway_sees_idle, timeout=PATIENCE, what="the gateway to see sleepy Idle")
    operator = threading.Thread(target=play_operator, daemon=True)
    chat = spawn_chat(env, ref, tmp_path / "chat.log")
    try:
        chat.expect_exact("you>")
        chat.expect_exact("waking the session")
        chat.sendline("are you awake?")
        chat.expect_exact(f"waiting for {ref} to wake")  # a spinner until it answers
        # The pod comes only now: chat's first word from the runner (the `watching` it
        # asked for at once) would otherwise say "awake" before the message went.
        operator.start()
        chat.expect_exact("fake reply to: ")
        chat.expect_exact("are you awake?")
        chat.expect_exact("✓ 1 turn ")
        chat.expect_exact("you>")
        chat.sendcontrol("d")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
        operator.join(PATIENCE)
    assert chat.exitstatus == 0


def _play_ephemeral(world: World, prefix: str, phase: str, text: str) -> threading.Thread:
    """The operator's part for `corral run`: the session ends with `phase` and a result."""

    def play() -> None:
        def created() -> str | None:
            items = world.custom.list_namespaced_custom_object(
                GROUP, VERSION, world.namespace, PLURAL
            )["items"]
            names = [
                i["metadata"]["name"] for i in items if i["metadata"]["name"].startswith(prefix)
            ]
            return names[0] if names else None

        name = wait_for(created, timeout=PATIENCE, what=f"a session named {prefix}*")
        world.set_status(name, {"phase": "Running", "numTurns": 1})
        subtype = "success" if phase == "Succeeded" else "error_max_turns"
        world.set_status(
            name,
            {"phase": phase, "numTurns": 2, "totalCostUsd": 0.01,
             "result": {"subtype": subtype, "text": text, "numTurns": 2, "totalCostUsd": 0.01}},
        )  # fmt: skip

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def test_run_wait_prints_the_result_and_exits_by_it(
    world: World, env: dict[str, str], tmp_path: Path
) -> None:
    task = tmp_path / "fizzbuzz.yaml"
    task.write_text("prompt: write fizzbuzz\nmaxTurns: 5\n")
    operator = _play_ephemeral(world, "fizzbuzz-", "Succeeded", "fizzbuzz.py written")
    done = corral(env, "run", "-f", str(task), "--wait")
    operator.join(PATIENCE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fizzbuzz.py written" in done.stdout and "Succeeded" in done.stdout

    task = tmp_path / "doomed.yaml"
    task.write_text("apiVersion: corral.dev/v1alpha1\nkind: AgentSession\n"
                    "metadata: {name: doomed-1}\nspec: {prompt: try, maxTurns: 1}\n")  # fmt: skip
    operator = _play_ephemeral(world, "doomed-", "Failed", "ran out of turns")
    failed = corral(env, "run", "-f", str(task), "--wait", "--rm")
    operator.join(PATIENCE)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "ran out of turns" in failed.stdout and "error_max_turns" in failed.stdout
    assert "deleted" in failed.stdout

    def gone() -> bool:
        items = world.custom.list_namespaced_custom_object(
            GROUP, VERSION, world.namespace, PLURAL, field_selector="metadata.name=doomed-1"
        )["items"]
        return not items or bool(items[0]["metadata"].get("deletionTimestamp"))

    wait_for(gone, timeout=PATIENCE, what="doomed-1 to be deleted")
    bad = corral(env, "run", "-f", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_wake_suspend_resume_and_logs_without_a_pod(world: World, env: dict[str, str]) -> None:
    world.create_session("nap", "Hybrid")
    world.set_status("nap", {"phase": "Idle"})
    ref = f"{world.namespace}/nap"
    woke = corral(env, "wake", ref)
    assert woke.returncode == 0, woke.stderr
    body = world.custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, "nap")
    assert body["metadata"]["annotations"][runtime.WAKE_ANNOTATION].startswith("client ")
    assert corral(env, "suspend", ref).returncode == 0
    body = world.custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, "nap")
    assert body["spec"]["suspend"] is True
    assert corral(env, "resume", ref).returncode == 0
    body = world.custom.get_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL, "nap")
    assert body["spec"]["suspend"] is False
    logs = corral(env, "logs", ref)
    assert logs.returncode == 1 and "has no pod now (phase Idle)" in logs.stderr
    assert "corral wake" in logs.stderr


def test_the_python_client_sync_and_async(
    world: World, gateway: GatewayThread, env: dict[str, str], runner: LocalRunner
) -> None:
    ensure_chat(world, gateway)
    options = {"kubeconfig": env["KUBECONFIG"], "gateway_url": env["CORRAL_GATEWAY_URL"]}
    with Client(**options) as corral_client:
        assert corral_client.namespace == world.namespace
        assert "chat" in [s.name for s in corral_client.list()]
        kinds = [e["type"] for e in corral_client.send("chat", "sync hello")]
        assert kinds[-1] == "result" and "text_delta" in kinds
        reply = corral_client.ask("chat", "sync ask")
        assert reply.ok and reply.text == "fake reply to: sync ask"

    async def use_async() -> str:
        async with AsyncClient(**options) as aclient:
            stream = await aclient.stream("chat")
            await stream.send("over the socket")
            text = ""
            async for event in stream.events():
                text += event.get("text", "") if event["type"] == "text_delta" else ""
                if event["type"] == "result":
                    break
            await stream.close()
            return text

    assert asyncio.run(use_async()) == "fake reply to: over the socket"
