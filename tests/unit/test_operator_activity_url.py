"""Where runners report activity when the operator's config does not say (issue: without a
URL, Hybrid sessions slept in the middle of a conversation)."""

from __future__ import annotations

from pathlib import Path

from corral.api.v1alpha1 import AgentSession
from corral.config import OperatorConfig, PeerRule
from corral.controller.cli import own_namespace
from corral.render import render_network_policy, render_pod


def test_in_a_cluster_runners_report_to_the_operators_own_service() -> None:
    config = OperatorConfig().in_cluster_activity("platform", "corral", 8081)
    assert config.activity_url == "http://corral.platform.svc:8081/v1/activity"
    assert config.activity_peer is not None
    assert config.activity_peer.namespace == "platform"
    assert [p.port for p in config.activity_peer.ports] == [8081]
    # The runner gets the URL, and its NetworkPolicy lets it through.
    session = AgentSession.model_validate(
        {"metadata": {"name": "s", "namespace": "team", "uid": "u"}, "spec": {"pattern": "Hybrid"}}
    )
    env = {
        e["name"]: e.get("value")
        for e in render_pod(session, config, 1)["spec"]["containers"][0]["env"]
    }
    assert env["CORRAL_ACTIVITY_URL"] == config.activity_url
    egress = render_network_policy(session, config)["spec"]["egress"]
    selectors = [
        peer.get("namespaceSelector", {}).get("matchLabels", {})
        for rule in egress
        for peer in rule.get("to", [])
    ]
    assert {"kubernetes.io/metadata.name": "platform"} in selectors


def test_a_configured_activity_url_and_peer_win() -> None:
    peer = PeerRule(namespace="ops", pod_labels={"app": "corral"})
    config = OperatorConfig(activity_url="http://gateway:9/v1/activity", activity_peer=peer)
    assert config.in_cluster_activity("platform", "corral", 8081) == config
    only_url = OperatorConfig(activity_peer=peer).in_cluster_activity("platform", "corral", 8081)
    assert only_url.activity_peer == peer


def test_own_namespace_in_and_out_of_a_cluster(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert own_namespace({"POD_NAMESPACE": "platform"}, missing) == "platform"
    assert own_namespace({}, missing) is None  # a laptop: no derivation, a condition instead
    mounted = tmp_path / "namespace"
    mounted.write_text("corral-system\n")
    assert own_namespace({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, mounted) == "corral-system"
    assert own_namespace({}, mounted) is None
