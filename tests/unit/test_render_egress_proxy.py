"""With the gateway's egress proxy, session pods are told to use it and may go nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.render import render_network_policy
from corral.render.pod import render_pod

SessionFactory = Callable[..., AgentSession]
GATEWAY = {"namespace": "corral-system", "podLabels": {"app.kubernetes.io/component": "gateway"}}
PROXY = {"url": "http://corral-gateway.corral-system.svc:3128", "port": 3128}


def proxied(**extra: Any) -> OperatorConfig:
    return OperatorConfig.model_validate({"gateway": GATEWAY, "egressProxy": PROXY, **extra})


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_session_pods_get_the_proxy_in_both_spellings(make_session: SessionFactory) -> None:
    env = env_of(render_pod(make_session(), proxied(), 0))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        assert env[name] == PROXY["url"], name
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1,.svc,.cluster.local"


def test_no_proxy_without_a_gateway_or_a_proxy(make_session: SessionFactory) -> None:
    alone = OperatorConfig.model_validate({"egressProxy": PROXY})  # nobody runs it
    for config in (OperatorConfig(), alone, OperatorConfig.model_validate({"gateway": GATEWAY})):
        env = env_of(render_pod(make_session(), config, 0))
        assert not {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} & set(env)


def test_the_admin_can_override_the_proxy_variables(make_session: SessionFactory) -> None:
    config = proxied(runnerEnv={"NO_PROXY": ".svc,.corp.example"})
    assert env_of(render_pod(make_session(), config, 0))["NO_PROXY"] == ".svc,.corp.example"


def test_egress_goes_only_to_dns_the_gateway_and_the_spec_cidrs(
    make_session: SessionFactory,
) -> None:
    session = make_session(network={"allowPublicHttps": True, "egress": [{"cidr": "10.20.0.0/16"}]})
    rules = render_network_policy(session, proxied())["spec"]["egress"]
    dns, gateway, cidr = rules  # no TCP 443 to the internet any more
    assert dns["ports"][0]["port"] == 53
    assert gateway == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "corral-system"}
                },
                "podSelector": {"matchLabels": GATEWAY["podLabels"]},
            }
        ],
        "ports": [{"port": 3128, "protocol": "TCP"}],
    }
    assert cidr == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}


def test_without_the_proxy_public_https_stays_a_policy_rule(
    make_session: SessionFactory,
) -> None:
    config = OperatorConfig.model_validate({"gateway": GATEWAY})
    rules = render_network_policy(make_session(), config)["spec"]["egress"]
    assert any(r.get("ports") == [{"port": 443, "protocol": "TCP"}] for r in rules)
