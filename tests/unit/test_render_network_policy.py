"""The NetworkPolicy: who may call the runner, and where the session may go."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig
from corral.render import render_network_policy, selector_labels

SessionFactory = Callable[..., AgentSession]
PRIVATE = {
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
}


def egress(policy: dict[str, Any]) -> list[dict[str, Any]]:
    rules = policy["spec"]["egress"]
    assert isinstance(rules, list)
    return rules


def ip_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in egress(policy) if "ipBlock" in r["to"][0]]


def https_rule(policy: dict[str, Any]) -> dict[str, Any] | None:
    matches = [r for r in ip_rules(policy) if r.get("ports") == [{"port": 443, "protocol": "TCP"}]]
    return matches[0] if matches else None


def test_selects_the_session_pods_both_ways(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    session = make_session()
    policy = render_network_policy(session, config)
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["podSelector"] == {"matchLabels": selector_labels(session)}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_ingress_only_from_the_operator_and_listed_namespaces(make_session: SessionFactory) -> None:
    config = OperatorConfig(namespace="corral-system")
    session = make_session(network={"ingressFromNamespaces": ["gateway", "corral-system"]})
    (rule,) = render_network_policy(session, config)["spec"]["ingress"]
    names = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]
    ]
    assert names == ["corral-system", "gateway"]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    assert rule["ports"] == [{"port": runtime.RUNNER_PORT, "protocol": "TCP"}]


def test_dns_only_to_cluster_dns(make_session: SessionFactory, config: OperatorConfig) -> None:
    dns = egress(render_network_policy(make_session(), config))[0]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def test_public_https_excludes_private_and_metadata_ranges(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    rule = https_rule(render_network_policy(make_session(), config))
    assert rule is not None
    (peer,) = rule["to"]
    assert peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert set(peer["ipBlock"]["except"]) == PRIVATE
    metadata = ipaddress.ip_address("169.254.169.254")
    assert any(metadata in ipaddress.ip_network(c) for c in peer["ipBlock"]["except"])


def test_public_https_can_be_turned_off(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    policy = render_network_policy(make_session(network={"allowPublicHttps": False}), config)
    assert https_rule(policy) is None
    assert len(egress(policy)) == 1  # DNS only


def test_spec_egress_rules(make_session: SessionFactory, config: OperatorConfig) -> None:
    network = {
        "allowPublicHttps": False,
        "egress": [
            {"cidr": "10.20.3.4/16", "ports": [{"port": 5432}, {"port": 53, "protocol": "UDP"}]},
            {"cidr": "203.0.113.7/32"},
        ],
    }
    rules = ip_rules(render_network_policy(make_session(network=network), config))
    assert rules == [
        {
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],  # masked: the server wants it canonical
            "ports": [{"port": 5432, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
        },
        {"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}]},  # no ports: every port
    ]


@pytest.mark.parametrize(
    ("cidr", "holes"),
    [
        ("0.0.0.0/0", ["169.254.0.0/16"]),
        ("169.0.0.0/8", ["169.254.0.0/16"]),
        ("::/0", ["fe80::/10", "fd00:ec2::254/128"]),
    ],
)
def test_spec_egress_never_reaches_link_local(
    make_session: SessionFactory, config: OperatorConfig, cidr: str, holes: list[str]
) -> None:
    network = {"allowPublicHttps": False, "egress": [{"cidr": cidr}]}
    (rule,) = ip_rules(render_network_policy(make_session(network=network), config))
    assert rule["to"][0]["ipBlock"] == {"cidr": cidr, "except": holes}


def test_a_rule_inside_a_blocked_range_is_dropped(make_session: SessionFactory) -> None:
    config = OperatorConfig(always_blocked=["10.0.0.0/8"])
    network = {"allowPublicHttps": False, "egress": [{"cidr": "10.1.0.0/16"}]}
    assert ip_rules(render_network_policy(make_session(network=network), config)) == []


def test_operator_wide_extra_egress(make_session: SessionFactory) -> None:
    config = OperatorConfig.model_validate(
        {
            "extraEgress": [
                {"namespace": "anthropic-gateway", "ports": [{"port": 8443}]},
            ]
        }
    )
    rules = egress(render_network_policy(make_session(), config))
    assert rules[1] == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "anthropic-gateway"}
                }
            }
        ],
        "ports": [{"port": 8443, "protocol": "TCP"}],
    }


def test_cluster_dns_is_configurable(make_session: SessionFactory) -> None:
    config = OperatorConfig.model_validate(
        {"dns": {"namespace": "dns", "podLabels": {"app": "coredns"}, "ports": [{"port": 5353}]}}
    )
    dns = egress(render_network_policy(make_session(), config))[0]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"app": "coredns"}}
    assert dns["ports"] == [{"port": 5353, "protocol": "TCP"}]


def test_no_scraper_ingress_unless_configured(make_session: SessionFactory) -> None:
    (rule,) = render_network_policy(make_session(), OperatorConfig())["spec"]["ingress"]
    assert all("podSelector" not in peer for peer in rule["from"])


def test_metrics_scraper_gets_its_own_ingress_rule_on_the_runner_port(
    make_session: SessionFactory,
) -> None:
    """Prometheus (namespace AND pod labels) may reach the runner port, which serves
    /metrics; the operator's rule is left as it was."""
    scraper = {"namespace": "monitoring", "podLabels": {"app.kubernetes.io/name": "prometheus"}}
    config = OperatorConfig.model_validate(
        {"namespace": "corral-system", "metricsScraper": scraper}
    )
    operator_rule, scraper_rule = render_network_policy(make_session(), config)["spec"]["ingress"]
    assert (
        operator_rule
        == render_network_policy(make_session(), OperatorConfig())["spec"]["ingress"][0]
    )
    # One peer with both selectors: pods with these labels in that namespace, not either.
    assert scraper_rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    assert scraper_rule["ports"] == [{"port": runtime.RUNNER_PORT, "protocol": "TCP"}]


def test_a_scraper_namespace_must_be_a_dns_label() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"metricsScraper\.namespace"):
        OperatorConfig.model_validate({"metricsScraper": {"namespace": "Not_A_Label"}})


def test_carved_blocks_are_computed_once_per_range_and_holes() -> None:
    from corral.render.network_policy import _carve, carve

    _carve.cache_clear()
    first = carve("0.0.0.0/0", ["10.0.0.0/8", "169.254.0.0/16"])
    again = carve("0.0.0.0/0", iter(["10.0.0.0/8", "169.254.0.0/16"]))
    assert _carve.cache_info().hits == 1  # not parsed again
    assert first == again == {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}
    # Each call its own dict: a manifest changed after rendering cannot change the next one.
    assert first is not again and first["except"] is not again["except"]
    assert carve("0.0.0.0/0", ["10.0.0.0/8"]) == {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}
    assert carve("10.1.0.0/16", ["10.0.0.0/8"]) is None  # inside a hole: nothing left
    assert carve("10.1.2.3/16", []) == {"cidr": "10.1.0.0/16"}  # masked, no except
