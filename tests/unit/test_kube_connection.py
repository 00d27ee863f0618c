"""The operator's credentials, read without the kubernetes package: in a pod, and from a
kubeconfig (the forms `corral cluster` and ServiceAccount token kubeconfigs write)."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cluster.pki import ADMIN, Pki
from corral.kube.credentials import (
    KubeconfigError,
    in_cluster_connection,
    kubeconfig_path,
    load_connection,
)

POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = Pki(tmp_path_factory.mktemp("pki"))
    made.ensure(("127.0.0.1",))
    return made


@pytest.fixture(scope="module")
def account_dir(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    """A ServiceAccount mount as the kubelet writes it: token, ca.crt."""
    directory = tmp_path_factory.mktemp("serviceaccount")
    (directory / "token").write_text("projected-token\n")
    (directory / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    return directory


def test_a_pod_gets_its_service_address_token_and_ca(account_dir: Path) -> None:
    connection = in_cluster_connection(POD_ENV, account_dir)
    assert connection is not None
    assert connection.server == "https://10.96.0.1:443"
    assert connection.token == "Bearer projected-token"
    # The file is read again as the kubelet rotates it.
    assert connection.token_file == str(account_dir / "token")
    assert isinstance(connection.ssl_context, ssl.SSLContext)
    assert connection.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert connection.ssl_context.cert_store_stats()["x509_ca"] == 1


def test_an_ipv6_service_address_is_bracketed(account_dir: Path) -> None:
    env = {**POD_ENV, "KUBERNETES_SERVICE_HOST": "fd00::1"}
    connection = in_cluster_connection(env, account_dir)
    assert connection is not None and connection.server == "https://[fd00::1]:443"


@pytest.mark.parametrize("missing", ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"])
def test_outside_a_pod_there_is_no_in_cluster_connection(account_dir: Path, missing: str) -> None:
    env = {k: v for k, v in POD_ENV.items() if k != missing}
    assert in_cluster_connection(env, account_dir) is None


@pytest.mark.parametrize("emptied", ["token", "ca.crt"])
def test_an_empty_or_missing_credential_file_is_not_a_pod(
    account_dir: Path, tmp_path: Path, emptied: str
) -> None:
    for name in ("token", "ca.crt"):
        (tmp_path / name).write_bytes(b"" if name == emptied else (account_dir / name).read_bytes())
    assert in_cluster_connection(POD_ENV, tmp_path) is None
    (tmp_path / emptied).unlink()
    assert in_cluster_connection(POD_ENV, tmp_path) is None


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> str:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "other", "cluster": {"server": "https://wrong"}},
            {"name": "here", "cluster": {"server": "https://127.0.0.1:6443", **cluster}},
        ],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "now", "context": {"cluster": "here", "user": "me"}}],
        "current-context": "now",
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_inline_client_certificate_and_ca(pki: Pki, tmp_path: Path) -> None:
    """What `corral cluster` writes: the admin's certificate and key inlined."""
    path = kubeconfig(
        tmp_path / "config",
        {"certificate-authority-data": b64(pki.ca_cert)},
        {
            "client-certificate-data": b64(pki.cert(ADMIN.filename)),
            "client-key-data": b64(pki.key(ADMIN.filename)),
        },
    )
    connection = load_connection(path)
    assert connection.server == "https://127.0.0.1:6443"  # the current context's cluster
    assert connection.token is None
    assert isinstance(connection.ssl_context, ssl.SSLContext)
    assert connection.ssl_context.cert_store_stats()["x509_ca"] == 1
    # No copy of the key is left behind.
    assert not list(Path(tempfile.gettempdir()).glob("corral-kubeconfig-*"))


def test_files_relative_to_the_kubeconfig_and_a_token(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    path = kubeconfig(tmp_path / "config", {"certificate-authority": "ca.crt"}, {"token": "abc"})
    connection = load_connection(path)
    assert connection.token == "Bearer abc"
    assert isinstance(connection.ssl_context, ssl.SSLContext)


def test_a_token_file_is_read_and_kept_for_rotation(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("rotating\n")
    path = kubeconfig(
        tmp_path / "config",
        {"insecure-skip-tls-verify": True},
        {"tokenFile": str(tmp_path / "token")},
    )
    connection = load_connection(path)
    assert connection.token == "Bearer rotating"
    assert connection.token_file == str(tmp_path / "token")
    assert connection.ssl_context is False


def test_a_relative_token_file_is_found_beside_the_kubeconfig(tmp_path: Path) -> None:
    """As kubectl reads it: relative to the kubeconfig's folder, not the working directory
    (the client reads the file again as it rotates, so the full path is kept)."""
    (tmp_path / "token").write_text("beside\n")
    path = kubeconfig(
        tmp_path / "config", {"insecure-skip-tls-verify": True}, {"tokenFile": "token"}
    )
    connection = load_connection(path)
    assert connection.token == "Bearer beside"
    assert connection.token_file == str(tmp_path / "token")


def test_kubeconfig_path_prefers_given_then_the_environment() -> None:
    env = {"KUBECONFIG": "/a/config:/b/config"}
    assert kubeconfig_path("/given", env) == Path("/given")
    assert kubeconfig_path(None, env) == Path("/a/config")
    assert kubeconfig_path(None, {}) == Path("~/.kube/config").expanduser()


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"current-context": None}, "current-context"),
        ({"current-context": "gone"}, "no context named 'gone'"),
    ],
)
def test_a_broken_kubeconfig_names_what_is_wrong(
    tmp_path: Path, change: dict[str, Any], names: str
) -> None:
    path = Path(kubeconfig(tmp_path / "config", {}, {"token": "t"}))
    document = yaml.safe_load(path.read_text())
    document.update(change)
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(KubeconfigError, match=names):
        load_connection(str(path))


def test_a_credential_plugin_without_the_kubernetes_package_is_a_clear_error(
    tmp_path: Path,
) -> None:
    """As in the operator's image: an `exec` user needs the official loader, which is not
    there; the error says so rather than connecting anonymously."""
    path = kubeconfig(
        tmp_path / "config",
        {"insecure-skip-tls-verify": True},
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "get-token"}},
    )
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "kubernetes" or name.startswith("kubernetes."):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
from corral.kube.credentials import KubeconfigError, load_connection
try:
    load_connection({path!r})
except KubeconfigError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "credential plugin" in done.stdout and "kubernetes package" in done.stdout, done.stderr
