"""Where the operator's API server is and how it proves who it is, without the kubernetes package.

In a pod: the service address from the environment and the ServiceAccount's token and CA.
Elsewhere: the kubeconfig's current context, read here for the credentials a kubeconfig
states outright (a token or token file, client certificate and key, as files or inline
data: what `corral cluster`, ServiceAccount token kubeconfigs and most static credentials
use); a context that runs a plugin (`exec`, `auth-provider`) is handed to the official
client's loader, when it is installed. The operator's image leaves that package out
(images/operator): about 10 MB of memory its models cost the operator, through kopf too.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_KUBECONFIG = "~/.kube/config"
# User fields that need code to produce a credential (a plugin, a provider's refresh).
PLUGIN_FIELDS = ("exec", "auth-provider")


@dataclass(frozen=True)
class Connection:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None
    token_file: str | None = None


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used; the message names the field."""


def load_connection(kubeconfig: str | None = None) -> Connection:
    """In-cluster credentials when running in a pod, else the kubeconfig's current context."""
    if not kubeconfig:
        in_cluster = in_cluster_connection(dict(os.environ), Path(SERVICE_ACCOUNT_DIR))
        if in_cluster is not None:
            return in_cluster
    path = kubeconfig_path(kubeconfig, dict(os.environ))
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise KubeconfigError(f"cannot read the kubeconfig {path}: {error}") from error
    cluster, user = current_context(document, path)
    if any(field in user for field in PLUGIN_FIELDS):
        return _official_loader(str(path))
    return kubeconfig_connection(cluster, user, path)


def in_cluster_connection(environ: dict[str, str], account_dir: Path) -> Connection | None:
    """The pod's own API address and ServiceAccount credentials; None outside a pod (what
    the official client's in-cluster loader checks: the service address and port in the
    environment, a token and a CA file that are not empty)."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT")
    token_file, ca_file = account_dir / "token", account_dir / "ca.crt"
    try:
        token = token_file.read_text().strip()
        has_ca = ca_file.stat().st_size > 0
    except OSError:
        return None
    if not (host and port and token and has_ca):
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return Connection(
        server=f"https://{host}:{port}",
        ssl_context=ssl.create_default_context(cafile=str(ca_file)),
        token=f"Bearer {token}",
        token_file=str(token_file),
    )


def kubeconfig_path(given: str | None, environ: dict[str, str]) -> Path:
    """The file to read: the one given, else $KUBECONFIG's first, else ~/.kube/config."""
    listed = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(given or (listed[0] if listed else DEFAULT_KUBECONFIG)).expanduser()


def _named(document: dict[str, Any], section: str, name: object, path: Path) -> dict[str, Any]:
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(section[:-1])
            return body if isinstance(body, dict) else {}
    raise KubeconfigError(f"{path}: no {section[:-1]} named {name!r} in {section}")


def current_context(document: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The current context's cluster and user entries."""
    name = document.get("current-context")
    if not name:
        raise KubeconfigError(f"{path}: current-context is not set (kubectl config use-context)")
    context = _named(document, "contexts", name, path)
    cluster = _named(document, "clusters", context.get("cluster"), path)
    user = _named(document, "users", context.get("user"), path) if context.get("user") else {}
    return cluster, user


def _pem(entry: dict[str, Any], field: str, base: Path) -> tuple[bytes | None, str | None]:
    """An entry's `<field>-data` (base64 PEM) or `<field>` (a file, relative to the
    kubeconfig's directory): (data, None) or (None, path)."""
    data = entry.get(f"{field}-data")
    if data:
        return base64.b64decode(data), None
    return None, _file(entry.get(field), base)


def _file(named: object, base: Path) -> str | None:
    """A file a kubeconfig names: relative paths are relative to the kubeconfig's directory."""
    return str(base / Path(str(named)).expanduser()) if named else None


def kubeconfig_connection(cluster: dict[str, Any], user: dict[str, Any], path: Path) -> Connection:
    """The connection a context's cluster and user entries state (no plugin)."""
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{path}: the current context's cluster has no server")
    base = path.parent
    context: ssl.SSLContext | bool
    if cluster.get("insecure-skip-tls-verify"):
        context = False
    else:
        ca_data, ca_file = _pem(cluster, "certificate-authority", base)
        context = ssl.create_default_context(
            cafile=ca_file, cadata=ca_data.decode() if ca_data else None
        )
        _load_client_certificate(context, user, base)
    token_file = _file(user.get("tokenFile"), base)
    token = user.get("token")
    if not token and token_file:
        token = Path(token_file).read_text().strip()
    return Connection(
        server=str(server),
        ssl_context=context,
        token=f"Bearer {token}" if token else None,
        token_file=token_file,
    )


def _load_client_certificate(context: ssl.SSLContext, user: dict[str, Any], base: Path) -> None:
    cert_data, cert_file = _pem(user, "client-certificate", base)
    key_data, key_file = _pem(user, "client-key", base)
    if not (cert_data or cert_file):
        return
    if not (key_data or key_file):
        raise KubeconfigError("the user has a client-certificate but no client-key")
    # ssl loads a certificate chain from files only: inline data goes through a private
    # directory that is gone as soon as the context holds the key.
    with tempfile.TemporaryDirectory(prefix="corral-kubeconfig-") as scratch:
        if cert_data is not None:
            cert_file = os.path.join(scratch, "client.crt")
            Path(cert_file).write_bytes(cert_data)
        if key_data is not None:
            key_file = os.path.join(scratch, "client.key")
            Path(key_file).write_bytes(key_data)
        context.load_cert_chain(str(cert_file), key_file)


def _official_loader(path: str) -> Connection:
    """A context with a credential plugin, through the kubernetes package's loader."""
    try:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
    except ImportError as missing:
        raise KubeconfigError(
            f"{path}: the current user runs a credential plugin, which needs the kubernetes "
            "package (the operator image leaves it out: in a pod the operator uses its "
            "ServiceAccount); install corral with pip, or use a token or certificate"
        ) from missing
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, client_configuration=configuration
    )
    context: ssl.SSLContext | bool = False
    if configuration.verify_ssl:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    # The loader (v37) keeps the token under "BearerToken"; older ones, "authorization".
    token = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    if token and not token.lower().startswith("bearer"):
        token = f"Bearer {token}"
    return Connection(server=configuration.host, ssl_context=context, token=token)
