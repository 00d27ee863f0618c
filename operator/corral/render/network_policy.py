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

from kubernetes import client as k8s

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession, PortSpec, parse_cidr
from corral.config import IPBlock, OperatorConfig, PeerRule
from corral.render.meta import (
    NETWORK,
    Manifest,
    child_name,
    object_meta,
    selector_labels,
    to_manifest,
)

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
HTTPS = PortSpec(port=443, protocol="TCP")


def network_policy_name(session: AgentSession) -> str:
    return child_name(session)


def carve(cidr: str, holes: Iterable[str]) -> k8s.V1IPBlock | None:
    """`cidr` (masked) minus the `holes` inside it; None when a hole covers all of it."""
    return _carve(cidr, tuple(holes))


# Every reconcile renders the policy (to compare it with the live one), and the same few
# ranges minus the same holes were parsed again each time: most of a reconcile's CPU. The
# block is never modified once made (only dumped), so one instance is shared.
@functools.lru_cache(maxsize=1024)
def _carve(cidr: str, holes: tuple[str, ...]) -> k8s.V1IPBlock | None:
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
    # Built from the wire form: `except` is a Python keyword, spelt differently in the model.
    return k8s.V1IPBlock.model_validate({"cidr": str(network), "except": excepts or None})


def _ports(ports: Iterable[PortSpec]) -> list[k8s.V1NetworkPolicyPort] | None:
    rendered = [k8s.V1NetworkPolicyPort(port=p.port, protocol=p.protocol) for p in ports]
    return rendered or None  # none listed: every port


def _namespace(name: str) -> k8s.V1LabelSelector:
    return k8s.V1LabelSelector(match_labels={NAMESPACE_NAME_LABEL: name})


def _peer_rule(rule: PeerRule) -> k8s.V1NetworkPolicyEgressRule:
    pods = k8s.V1LabelSelector(match_labels=dict(rule.pod_labels)) if rule.pod_labels else None
    peer = k8s.V1NetworkPolicyPeer(namespace_selector=_namespace(rule.namespace), pod_selector=pods)
    return k8s.V1NetworkPolicyEgressRule(to=[peer], ports=_ports(rule.ports))


def _public_https(
    blocks: list[IPBlock], always_blocked: list[str]
) -> k8s.V1NetworkPolicyEgressRule | None:
    peers = []
    for block in blocks:
        ip_block = carve(block.cidr, [*block.except_, *always_blocked])
        if ip_block is not None:
            peers.append(k8s.V1NetworkPolicyPeer(ip_block=ip_block))
    return k8s.V1NetworkPolicyEgressRule(to=peers, ports=_ports([HTTPS])) if peers else None


def _ingress(session: AgentSession, config: OperatorConfig) -> list[k8s.V1NetworkPolicyIngressRule]:
    runner_port = _ports([PortSpec(port=runtime.RUNNER_PORT, protocol="TCP")])
    # With a gateway, only its pods; without one, the operator's namespace as before.
    opted_in = session.spec.network.ingress_from_namespaces
    if config.gateway is not None:
        namespaces = dict.fromkeys(opted_in)
        pod_peers = [config.gateway]
    else:
        namespaces = dict.fromkeys([config.namespace, *opted_in])
        pod_peers = []
    peers = [k8s.V1NetworkPolicyPeer(namespace_selector=_namespace(ns)) for ns in namespaces]
    rules = []
    if peers:
        rules.append(
            k8s.V1NetworkPolicyIngressRule.model_validate({"from": peers, "ports": runner_port})
        )
    if config.metrics_scraper is not None:
        pod_peers.append(config.metrics_scraper)
    for selected in pod_peers:
        # Those pods only (namespace AND labels), each a rule of its own so that none widens
        # another: the gateway, and a scraper of the runner's /metrics.
        pods = k8s.V1LabelSelector(match_labels=dict(selected.pod_labels))
        peer = k8s.V1NetworkPolicyPeer(
            namespace_selector=_namespace(selected.namespace), pod_selector=pods
        )
        rules.append(
            k8s.V1NetworkPolicyIngressRule.model_validate({"from": [peer], "ports": runner_port})
        )
    return rules


def _egress(session: AgentSession, config: OperatorConfig) -> list[k8s.V1NetworkPolicyEgressRule]:
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
            peer = k8s.V1NetworkPolicyPeer(ip_block=ip_block)
            rules.append(k8s.V1NetworkPolicyEgressRule(to=[peer], ports=_ports(egress.ports)))
    return rules


def render_network_policy(session: AgentSession, config: OperatorConfig) -> Manifest:
    policy = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=object_meta(session, network_policy_name(session), NETWORK),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=selector_labels(session)),
            policy_types=["Ingress", "Egress"],
            ingress=_ingress(session, config),
            egress=_egress(session, config),
        ),
    )
    return to_manifest(policy)
