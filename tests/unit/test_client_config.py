"""Where corral.client sends what, from a kubeconfig: tokens, certificates, the gateway."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.client.config import gateway_target, load_credentials
from corral.client.errors import CorralError
from corral.client.events import SseParser
from corral.client.task import load_task


def _kubeconfig(path: Path, user: dict[str, str], namespace: str | None = None) -> str:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )  # fmt: skip
    return str(path)


def _client_certificate(tmp_path: Path) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "c.crt", tmp_path / "c.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {"client-certificate": str(cert_path), "client-key": str(key_path)}


@pytest.fixture(autouse=True)
def _no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_GATEWAY_URL", "CORRAL_GATEWAY_NAMESPACE", "CORRAL_GATEWAY_SERVICE"):
        monkeypatch.delenv(name, raising=False)


def test_a_token_goes_to_the_api_server_and_in_x_corral_token_through_its_proxy(
    tmp_path: Path,
) -> None:
    path = _kubeconfig(tmp_path / "kc", {"token": "tok-123"}, namespace="demo")
    credentials = load_credentials(path)
    assert credentials.token == "tok-123" and credentials.namespace == "demo"
    target = gateway_target(credentials)
    assert target.base_url == (
        "https://127.0.0.1:6443/api/v1/namespaces/corral-system/services/corral-gateway:http/proxy"
    )
    assert target.headers(credentials) == {
        "Authorization": "Bearer tok-123",
        "X-Corral-Token": "tok-123",
    }
    direct = gateway_target(credentials, url="https://gw.example.com/")
    assert direct.base_url == "https://gw.example.com"
    assert direct.headers(credentials) == {"Authorization": "Bearer tok-123"}


def test_gateway_namespace_and_service_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = load_credentials(_kubeconfig(tmp_path / "kc", {"token": "t"}))
    assert credentials.namespace == "default"
    monkeypatch.setenv("CORRAL_GATEWAY_NAMESPACE", "gw-ns")
    monkeypatch.setenv("CORRAL_GATEWAY_SERVICE", "gw")
    assert "/namespaces/gw-ns/services/gw:http/proxy" in gateway_target(credentials).base_url
    monkeypatch.setenv("CORRAL_GATEWAY_URL", "http://127.0.0.1:9")
    assert gateway_target(credentials).base_url == "http://127.0.0.1:9"


def test_a_certificate_only_kubeconfig_cannot_reach_the_gateway_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    credentials = load_credentials(_kubeconfig(tmp_path / "kc", _client_certificate(tmp_path)))
    assert credentials.token is None and credentials.client_certificate
    with pytest.raises(CorralError) as caught:
        gateway_target(credentials).headers(credentials)
    message = str(caught.value)
    assert "no bearer token" in message and "kubectl create token" in message
    assert "\n" not in message


def test_a_missing_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CorralError, match=r"cannot load Kubernetes credentials.*KUBECONFIG"):
        load_credentials(str(tmp_path / "nope"))


def test_a_task_file_becomes_an_ephemeral_session_named_after_the_file(tmp_path: Path) -> None:
    task = tmp_path / "Fizz_Buzz.yaml"
    task.write_text("prompt: write fizzbuzz\nmaxTurns: 3\n")
    manifest = load_task(str(task))
    assert manifest["kind"] == "AgentSession"
    assert manifest["metadata"] == {"generateName": "fizz-buzz-"}
    assert manifest["spec"] == {"prompt": "write fizzbuzz", "maxTurns": 3, "pattern": "Ephemeral"}
    task.write_text("kind: AgentSession\nmetadata: {name: x}\nspec: {pattern: Hybrid}\n")
    with pytest.raises(CorralError, match=r"spec\.pattern is 'Hybrid'"):
        load_task(str(task))
    task.write_text("kind: Pod\n")
    with pytest.raises(CorralError, match="kind 'Pod' is not AgentSession"):
        load_task(str(task))


def test_a_gateway_at_its_own_url_is_verified_whatever_the_kubeconfig_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insecure-skip-tls-verify is for the API server: the bearer token must not go to a
    gateway nobody verified, and a gateway with a public certificate must verify."""
    import ssl

    from corral.client.aio import AsyncClient

    monkeypatch.delenv("CORRAL_GATEWAY_URL", raising=False)
    credentials = load_credentials(_kubeconfig(tmp_path / "kc", {"token": "t0k"}))
    assert credentials.ssl_context is False  # the kubeconfig's insecure cluster
    direct = AsyncClient(credentials=credentials, gateway_url="https://corral.example.com")
    context = direct._gateway_ssl()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the system's trust store
    proxied = AsyncClient(credentials=credentials)  # through the API server: its settings
    assert proxied._gateway_ssl() is False


async def test_a_line_longer_than_aiohttps_reader_takes_is_cut_not_fatal() -> None:
    """An event of 300 KB (a file the agent wrote) passed aiohttp's 128 KiB line limit
    and ended `corral send` with a traceback; lines are now read with a bound of their own."""
    import aiohttp
    from aiohttp import web

    from corral.client.aio import MAX_LINE
    from corral.stream_lines import bounded_lines
    from corral.testing.serving import route, serving

    big = b'data: {"type": "assistant", "content": "' + b"x" * 300_000 + b'"}\n\n'
    huge = b"data: " + b"y" * 5_000_000 + b"\n\n"
    tail = b'data: {"type": "result", "subtype": "success"}\n\n'

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for piece in (big, huge, tail):
            await response.write(piece)
        return response

    parser = SseParser()
    events = []
    async with (
        serving(route(stream)) as url,
        aiohttp.ClientSession(read_bufsize=2**16) as http,
        http.get(url) as response,
    ):
        async for line in bounded_lines(response.content, MAX_LINE, skip_long=True):
            event = parser.feed(line.decode())
            if event is not None:
                events.append(event)
    kinds = [e["type"] for e in events]
    assert kinds == ["assistant", "error", "result"], kinds
    assert len(events[0]["content"]) == 300_000
    assert "over 1 MiB was skipped" in events[1]["message"]
