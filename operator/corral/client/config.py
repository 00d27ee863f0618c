"""Where the client talks to and as whom: the user's kubeconfig, and the gateway's address.

Credentials are the kubeconfig's current context (tokens, exec plugins, client
certificates) through the official loader, or in-cluster ServiceAccount credentials when
there is no kubeconfig. Session traffic goes to the gateway: at CORRAL_GATEWAY_URL (an
Ingress, say) when set, else through the API server's service proxy to the gateway
Service, so the user needs no rights in the operator's namespace beyond that proxy.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from corral.client.errors import CorralError

DEFAULT_GATEWAY_NAMESPACE = "corral-system"
DEFAULT_GATEWAY_SERVICE = "corral-gateway"
GATEWAY_PORT_NAME = "http"
ENV_GATEWAY_URL = "CORRAL_GATEWAY_URL"
# CA bundle for a gateway at its own URL (default: the system's trust store).
ENV_GATEWAY_CA = "CORRAL_GATEWAY_CA"
ENV_GATEWAY_NAMESPACE = "CORRAL_GATEWAY_NAMESPACE"
ENV_GATEWAY_SERVICE = "CORRAL_GATEWAY_SERVICE"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# The gateway reads the caller's token here when the API server's proxy ate Authorization.
TOKEN_HEADER = "X-Corral-Token"

NO_TOKEN_HINT = (
    "use a kubeconfig with a bearer token (e.g. `kubectl create token NAME`, or an OIDC/exec "
    "login), or set CORRAL_GATEWAY_URL to a gateway that your credentials can reach"
)


@dataclass(frozen=True)
class Credentials:
    """The API server and the user's credentials for it."""

    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None  # bearer token, without the scheme
    namespace: str  # the context's namespace: the default for NAME without NS/
    client_certificate: bool = False


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    try:
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            namespace = _context_namespace(kubeconfig, context)
        except k8s_config.ConfigException:
            # No kubeconfig at all: inside a pod, use its ServiceAccount.
            if kubeconfig or context or "KUBERNETES_SERVICE_HOST" not in os.environ:
                raise
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            namespace = Path(IN_CLUSTER_NAMESPACE).read_text().strip() or "default"
    except (k8s_config.ConfigException, OSError, KeyError, TypeError, ValueError) as error:
        raise CorralError(
            f"cannot load Kubernetes credentials: {str(error)[:300]}",
            "point KUBECONFIG (or --kubeconfig) at a kubeconfig file with a current context",
        ) from None
    context_ssl: ssl.SSLContext | bool
    if configuration.verify_ssl:
        context_ssl = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context_ssl.load_cert_chain(configuration.cert_file, configuration.key_file)
    else:
        context_ssl = False
    raw = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    token = str(raw).removeprefix("Bearer ").removeprefix("bearer ").strip() if raw else None
    return Credentials(
        server=str(configuration.host).rstrip("/"),
        ssl_context=context_ssl,
        token=token or None,
        namespace=namespace,
        client_certificate=bool(configuration.cert_file),
    )


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config as k8s_config

    contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if context:
        active = next((c for c in contexts if c.get("name") == context), active)
    return str(((active or {}).get("context") or {}).get("namespace") or "default")


@dataclass(frozen=True)
class GatewayTarget:
    """The base URL that `/sessions/NS/NAME/...` is appended to, and how to authenticate."""

    base_url: str
    via_api_server: bool

    def headers(self, credentials: Credentials) -> dict[str, str]:
        if not credentials.token:
            where = "the gateway" + (" behind the API server" if self.via_api_server else "")
            raise CorralError(
                f"your kubeconfig has no bearer token to present to {where} "
                "(client certificates authenticate to the API server only)",
                NO_TOKEN_HINT,
            )
        headers = {"Authorization": f"Bearer {credentials.token}"}
        if self.via_api_server:
            # The API server authenticates with Authorization and drops it before proxying.
            headers[TOKEN_HEADER] = credentials.token
        return headers


def gateway_target(
    credentials: Credentials,
    url: str | None = None,
    namespace: str | None = None,
    service: str | None = None,
) -> GatewayTarget:
    """The gateway: an explicit URL, else the API server's service proxy to its Service."""
    url = url or os.environ.get(ENV_GATEWAY_URL) or None
    if url:
        return GatewayTarget(url.rstrip("/"), via_api_server=False)
    namespace = namespace or os.environ.get(ENV_GATEWAY_NAMESPACE) or DEFAULT_GATEWAY_NAMESPACE
    service = service or os.environ.get(ENV_GATEWAY_SERVICE) or DEFAULT_GATEWAY_SERVICE
    base = (
        f"{credentials.server}/api/v1/namespaces/{namespace}/services/"
        f"{service}:{GATEWAY_PORT_NAME}/proxy"
    )
    return GatewayTarget(base, via_api_server=True)
