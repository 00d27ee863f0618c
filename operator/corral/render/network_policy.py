"""The session's NetworkPolicy: default deny both ways, then only what the session needs.

Ingress: the operator's namespace (and spec.network.ingressFromNamespaces) on the runner
port; with `metricsScraper` configured, that monitoring system's pods too, on the same port.
Egress: cluster DNS; the operator's extra peers; the spec's own CIDRs, minus link-local;
and then either the gateway's egress proxy (when the operator has one: everything else
leaves through it, and allowPublicHttps is a rule of the proxy, not of this policy), or,
without one, TCP 443 to public addresses when allowPublicHttps (private, carrier-grade NAT,
loopback and link-local ranges carved out, which covers the cloud metadata address).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession, PortSpec, parse_cidr
from corral.config import IPBlock, OperatorConfig, PeerRule
from corral.render.meta import (
    NETWORK,
    Manifest,
    child_name,
    object_meta,
    selector_labels,
    without_none,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
HTTPS = PortSpec(port=443, protocol="TCP")


def network_policy_name(session: AgentSession) -> str:
    return child_name(session)


def carve(cidr: str, holes: Iterable[str]) -> Manifest | None:
    """`cidr` (masked) minus the `holes` inside it, as an ipBlock; None when a hole covers
    all of it. A new dict each time: the caller's manifest may be changed after."""
    carved = _carve(cidr, tuple(holes))
    if carved is None:
        return None
    network, excepts = carved
    return {"cidr": network, "except": list(excepts)} if excepts else {"cidr": network}


# Every reconcile renders the policy (to compare it with the live one), and the same few
# ranges minus the same holes were parsed again each time: most of a reconcile's CPU.
@functools.lru_cache(maxsize=1024)
def _carve(cidr: str, holes: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    network = parse_cidr(cidr)
    excepts: list[str] = []
    for text in holes:
        hole = ipaddress.ip_network(text, strict=False)
        if hole.version != network.version:
            continue
        if network.subnet_of(hole):  # type: ignore[arg-type]  # same version, checked above
            return None
        if hole.subnet_of(network) and str(hole) not in excepts:  # type: ignore[arg-type]
            excepts.append(str(hole))
    return str(network), tuple(excepts)


def _ports(ports: Iterable[PortSpec]) -> list[Manifest] | None:
    rendered = [{"port": p.port, "protocol": p.protocol} for p in ports]
    return rendered or None  # none listed: every port


def _namespace(name: str) -> Manifest:
    return {"matchLabels": {NAMESPACE_NAME_LABEL: name}}


def _rule(peers_key: str, peers: list[Manifest], ports: list[Manifest] | None) -> Manifest:
    """An ingress (`from`) or egress (`to`) rule; without ports, every port."""
    return without_none({peers_key: peers, "ports": ports})


def _peer_rule(rule: PeerRule) -> Manifest:
    peer = {"namespaceSelector": _namespace(rule.namespace)}
    if rule.pod_labels:
        peer["podSelector"] = {"matchLabels": dict(rule.pod_labels)}
    return _rule("to", [peer], _ports(rule.ports))


def _public_https(blocks: list[IPBlock], always_blocked: list[str]) -> Manifest | None:
    peers = []
    for block in blocks:
        ip_block = carve(block.cidr, [*block.except_, *always_blocked])
        if ip_block is not None:
            peers.append({"ipBlock": ip_block})
    return _rule("to", peers, _ports([HTTPS])) if peers else None


def _ingress(session: AgentSession, config: OperatorConfig) -> list[Manifest]:
    runner_port = _ports([PortSpec(port=runtime.RUNNER_PORT, protocol="TCP")])
    # With a gateway, only its pods; without one, the operator's namespace as before.
    opted_in = session.spec.network.ingress_from_namespaces
    if config.gateway is not None:
        namespaces = dict.fromkeys(opted_in)
        pod_peers = [config.gateway]
    else:
        namespaces = dict.fromkeys([config.namespace, *opted_in])
        pod_peers = []
    peers = [{"namespaceSelector": _namespace(ns)} for ns in namespaces]
    rules = []
    if peers:
        rules.append(_rule("from", peers, runner_port))
    if config.metrics_scraper is not None:
        pod_peers.append(config.metrics_scraper)
    for selected in pod_peers:
        # Those pods only (namespace AND labels), each a rule of its own so that none widens
        # another: the gateway, and a scraper of the runner's /metrics.
        peer = {
            "namespaceSelector": _namespace(selected.namespace),
            "podSelector": {"matchLabels": dict(selected.pod_labels)},
        }
        rules.append(_rule("from", [peer], runner_port))
    return rules


def _egress(session: AgentSession, config: OperatorConfig) -> list[Manifest]:
    network = session.spec.network
    peers = [config.dns, *config.extra_egress]
    if config.activity_peer is not None:
        peers.append(config.activity_peer)
    proxy = config.proxied_egress
    if proxy is not None and config.gateway is not None:
        # The gateway's pods on the egress port only: the proxy decides the rest.
        peers.append(
            PeerRule(
                namespace=config.gateway.namespace,
                pod_labels=config.gateway.pod_labels,
                ports=[PortSpec(port=proxy.port, protocol="TCP")],
            )
        )
    if config.gateway is not None and config.model_proxy is not None:
        # The model, through the gateway's model proxy (its pods, its model port only).
        peers.append(
            PeerRule(
                namespace=config.gateway.namespace,
                pod_labels=dict(config.gateway.pod_labels),
                ports=[PortSpec(port=config.model_proxy.port, protocol="TCP")],
            )
        )
    rules = [_peer_rule(peer) for peer in peers]
    if network.allow_public_https and proxy is None:
        public = _public_https(config.public_https, config.always_blocked)
        if public is not None:
            rules.append(public)
    for egress in network.egress:
        ip_block = carve(egress.cidr, config.always_blocked)
        if ip_block is not None:
            rules.append(_rule("to", [{"ipBlock": ip_block}], _ports(egress.ports)))
    return rules


def render_network_policy(session: AgentSession, config: OperatorConfig) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(session, network_policy_name(session), NETWORK),
        "spec": {
            "egress": _egress(session, config),
            "ingress": _ingress(session, config),
            "podSelector": {"matchLabels": selector_labels(session)},
            "policyTypes": ["Ingress", "Egress"],
        },
    }
