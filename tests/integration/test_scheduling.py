"""spec.scheduling on a real API server and scheduler: a session places its own pod.

The operator here tolerates no taint, so KWOK's fake nodes (tainted
`kwok.x-k8s.io/node=fake:NoSchedule`) are closed to its pods unless a session's own
tolerations open them: how one operator runs hundreds of sessions on fake nodes beside a
few on a real one. Its nodeSelector (`kubernetes.io/os: linux`, which the fake nodes carry)
is the platform's constraint: a session's value for the same key does not replace it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from lifecycle_support import (
    Sessions,
    condition_is,
    event_reasons,
    own_prefix,
    restricted_namespace,
    session_pods,
    small_resources,
    wait_event,
)

from corral.api.v1alpha1 import GROUP, PLURAL, VERSION
from corral.cluster.control_plane import FAKE_NODES
from corral.testing.kube import wait_for
from corral.testing.operator import KWOK_TOLERATION, OperatorProcess, kwok_operator_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

PLATFORM_SELECTOR = {"kubernetes.io/os": "linux"}
ON_KWOK = {"nodeSelector": {"type": "kwok"}, "tolerations": [KWOK_TOLERATION]}


@pytest.fixture
def sessions(
    kubeconfig: Path,
    crd: None,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    tmp_path: Path,
) -> Iterator[Sessions]:
    """Sessions of an operator whose config has no toleration at all."""
    prefix = own_prefix()
    system = restricted_namespace(core, f"{prefix}system")
    namespace = restricted_namespace(core, f"{prefix}sessions")
    config = kwok_operator_config(system, tolerations=[], nodeSelector=PLATFORM_SELECTOR)
    assert not config.tolerations
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        config=config,
        workdir=tmp_path,
        namespaces=[namespace],
        leader_election=False,
        identity=f"{prefix}placement",
    ).start()
    try:
        yield Sessions(custom, namespace)
    finally:
        process.stop()
        for name in (namespace, system):
            core.delete_namespace(name, propagation_policy="Background")


def spec(**extra: Any) -> dict[str, Any]:
    return {"pattern": "LongRunning", "resources": small_resources(), **extra}


def running_on_kwok(sessions: Sessions, core: client.CoreV1Api, name: str) -> Any:
    """The session's one pod, once it is bound to a fake node and the session is Running."""

    def placed() -> Any:
        pods = [p for p in session_pods(core, sessions.namespace, name) if p.spec.node_name]
        running = sessions.status(name).get("phase") == "Running"
        return pods[0] if len(pods) == 1 and running else None

    pod = wait_for(placed, timeout=60, what=f"{name}'s pod on a KWOK node")
    assert pod.spec.node_name in FAKE_NODES
    return pod


def test_a_session_tolerates_its_way_onto_kwok_nodes(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    sessions.create("placed", spec(scheduling=ON_KWOK))
    sessions.create("unplaced", spec())
    pod = running_on_kwok(sessions, core, "placed")
    assert pod.spec.node_selector == {**PLATFORM_SELECTOR, "type": "kwok"}
    # (besides the not-ready and unreachable ones the API server adds to every pod)
    assert KWOK_TOLERATION["key"] in [t.key for t in pod.spec.tolerations]
    # The same session without the toleration: no node will take its pod.
    sessions.wait_status(
        "unplaced",
        lambda s: condition_is(s, "Ready", "False", "Unschedulable"),
        "Ready=False Unschedulable",
    )
    (stuck,) = session_pods(core, sessions.namespace, "unplaced")
    assert stuck.spec.node_name is None
    assert KWOK_TOLERATION["key"] not in [t.key for t in stuck.spec.tolerations or []]
    # Adding spec.scheduling replaces the pod (a running one cannot move), and the new one
    # lands on a fake node.
    sessions.patch("unplaced", {"spec": {"scheduling": ON_KWOK}})
    moved = running_on_kwok(sessions, core, "unplaced")
    assert moved.metadata.name != stuck.metadata.name
    assert "SpecChanged" in event_reasons(core, sessions.namespace, "unplaced")
    # The placed session never asked for a change, so it kept its pod, with no Warning.
    (same,) = session_pods(core, sessions.namespace, "placed")
    assert same.metadata.uid == pod.metadata.uid
    assert "NodeSelectorOverridden" not in event_reasons(core, sessions.namespace, "placed")


def test_the_operators_selector_wins_over_the_sessions(
    sessions: Sessions, core: client.CoreV1Api
) -> None:
    """A session asking for other nodes than the platform allows gets the platform's, and
    a Warning that names the key."""
    selector = {"kubernetes.io/os": "windows", "type": "kwok"}
    sessions.create("windows", spec(scheduling={**ON_KWOK, "nodeSelector": selector}))
    pod = running_on_kwok(sessions, core, "windows")
    assert pod.spec.node_selector == {**PLATFORM_SELECTOR, "type": "kwok"}
    warning = wait_event(core, sessions.namespace, "windows", "NodeSelectorOverridden")
    assert warning.type == "Warning"
    assert warning.message.startswith("spec.scheduling.nodeSelector kubernetes.io/os: ")


def documented_policy(namespace: str) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy of docs/operations.md, bound to `namespace` only."""
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Pod placement") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    policy, binding = yaml.safe_load_all(block)
    suffix = "-" + namespace
    policy["metadata"]["name"] += suffix
    binding["metadata"]["name"] += suffix
    binding["spec"]["policyName"] += suffix
    only_here = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    binding["spec"]["matchResources"] = {"namespaceSelector": only_here}
    return [policy, binding]


def test_the_documented_placement_policy_refuses_other_placements(
    api_client: client.ApiClient, custom: client.CustomObjectsApi, namespace: str, crd: None
) -> None:
    """The example in docs/operations.md, on the real API server: it admits the GPU
    placement and no placement, and refuses tolerating everything or another pool."""
    admission = client.AdmissionregistrationV1Api(api_client)
    policy, binding = documented_policy(namespace)
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    sessions = Sessions(custom, namespace)

    def refusal(name: str, scheduling: dict[str, Any]) -> str | None:
        # A fresh name each time: an admitted one may still be terminating (a finalizer).
        name += "-" + uuid.uuid4().hex[:6]
        try:
            sessions.create(name, spec(scheduling=scheduling))
        except ApiException as error:
            return str(error.body)
        sessions.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return None

    everything = {"tolerations": [{"operator": "Exists"}]}
    try:
        # A new policy takes effect within moments, not at once.
        said = wait_for(lambda: refusal("everything", everything), timeout=30, what="the policy")
        assert "may only tolerate the taint nvidia.com/gpu" in said
        other_pool = refusal("cpu-pool", {"nodeSelector": {"pool": "cpu"}})
        assert other_pool is not None and "may only be pool=gpu" in other_pool
        gpu = {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
        assert refusal("gpu", gpu) is None
        assert refusal("unplaced", {}) is None
    finally:
        admission.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        admission.delete_validating_admission_policy(policy["metadata"]["name"])
