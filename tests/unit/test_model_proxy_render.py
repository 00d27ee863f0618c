"""What the operator renders with the gateway's model proxy on: the pod's model URL and
per-session credential, and nothing of a real key; the policy's egress to the proxy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from corral.api import runtime
from corral.api.tokens import model_credential
from corral.api.v1alpha1 import AgentSession, CredentialsSpec
from corral.config import ModelProxyConfig, OperatorConfig, ScraperPeer
from corral.controller import credentials
from corral.render import render_network_policy, render_pod, restart_hash

SessionFactory = Callable[..., AgentSession]
KEY = b"s" * 40
URL = "http://corral-gateway.corral-system.svc:8082"
GATEWAY = ScraperPeer(namespace="corral-system", pod_labels={"app.kubernetes.io/component": "gw"})


def proxied(**extra: Any) -> OperatorConfig:
    config = OperatorConfig(
        gateway=GATEWAY,
        model_proxy=ModelProxyConfig(url=URL),
        default_credentials=CredentialsSpec(secret_name="operator-default-key"),
        default_anthropic_base_url="https://elsewhere.example",
        **extra,
    )
    return config.with_activity_keys((KEY,))


def _env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning", "Hybrid", "Shared"])
def test_pods_get_the_proxy_url_and_their_own_credential_and_no_key(
    make_session: SessionFactory, pattern: str
) -> None:
    session = make_session(
        pattern,
        credentials={"secretName": "team-key", "baseUrl": "https://api.anthropic.com"},
    )
    pod = render_pod(session, proxied(), 0)
    env = _env(pod)
    meta = session.metadata
    assert env[runtime.ENV_BASE_URL] == {"name": runtime.ENV_BASE_URL, "value": URL}
    assert env[runtime.ENV_API_KEY] == {
        "name": runtime.ENV_API_KEY,
        "value": model_credential(KEY, meta.namespace, meta.name, meta.uid or ""),
    }
    # No Secret of any kind reaches the pod: not as env, envFrom or volume.
    text = json.dumps(pod)
    assert "secretKeyRef" not in text and '"secret"' not in text and "envFrom" not in text
    assert "team-key" not in text and "operator-default-key" not in text


def test_without_the_proxy_the_pod_references_the_secret_as_before(
    make_session: SessionFactory,
) -> None:
    config = OperatorConfig(gateway=GATEWAY).with_activity_keys((KEY,))
    pod = render_pod(make_session(credentials={"secretName": "team-key"}), config, 0)
    ref = _env(pod)[runtime.ENV_API_KEY]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "team-key"


def test_the_credential_differs_per_session(make_session: SessionFactory) -> None:
    one = _env(render_pod(make_session(name="one"), proxied(), 0))[runtime.ENV_API_KEY]
    two = _env(render_pod(make_session(name="two"), proxied(), 0))[runtime.ENV_API_KEY]
    assert one["value"] != two["value"]


def test_the_policy_lets_sessions_reach_the_proxy_port_of_the_gateway_pods_only(
    make_session: SessionFactory,
) -> None:
    egress = render_network_policy(make_session(), proxied())["spec"]["egress"]
    rule = {
        "to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "corral-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gw"}}}],
        "ports": [{"port": 8082, "protocol": "TCP"}],
    }  # fmt: skip
    assert rule in egress
    plain = OperatorConfig(gateway=GATEWAY)
    assert rule not in render_network_policy(make_session(), plain)["spec"]["egress"]


def test_turning_the_proxy_on_replaces_pods_and_off_leaves_hashes_as_they_were(
    make_session: SessionFactory,
) -> None:
    spec = make_session().spec
    assert restart_hash(spec, "img") == restart_hash(spec, "img", None)
    assert restart_hash(spec, "img") != restart_hash(spec, "img", URL)


def test_with_the_proxy_no_secret_is_checked_and_no_key_is_missing(
    make_session: SessionFactory,
) -> None:
    config = proxied()
    session = make_session(credentials={"secretName": "team-key", "baseUrl": "https://x.example"})
    assert credentials.refusal(session, config) is None  # baseUrl not used, no Secret needed
    assert credentials.credentials_of(session, config) is None
    assert "model proxy" in (credentials.operator_key_source(config) or "")


def test_the_lifecycle_starts_pods_without_a_secret_when_the_proxy_holds_the_key() -> None:
    from test_lifecycle import conditions, created, make_session, observe, with_status

    from corral.controller.lifecycle import decide

    session = make_session("LongRunning", credentials={"secretName": "team-key"})
    plan = decide(observe(session), proxied())
    assert plan.check_credentials is None  # no Secret is looked up
    (pod,) = created(plan, "Pod")
    assert "team-key" not in json.dumps(pod)
    state, reason = conditions(with_status(session, plan))["CredentialsReady"]
    assert (state, reason) == ("True", "OperatorProvided")
