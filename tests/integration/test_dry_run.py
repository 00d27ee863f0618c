"""Generated valid sessions pass the real API server, and so does everything rendered from them.

For each spec that `strategies.sessions()` draws (valid by the models' own rules):
- the AgentSession is accepted on a server-side dry-run create, and the server's defaulted
  spec reads back as the same spec (models and CRD agree on defaults);
- the rendered Pod, Service, NetworkPolicy (and PVC for Hybrid) are accepted on a
  server-side dry-run create in a namespace that enforces Pod Security `restricted`, with
  every admission plugin of the control plane in the path.
A dry run persists nothing, so one namespace serves every example.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.api import v1alpha1 as api
from corral.api.units import parse_quantity
from corral.config import OperatorConfig
from corral.render import render_children
from corral.render.cpu_boost import startup_cpu_limit
from corral.render.meta import Manifest
from corral.testing.operator import kwok_operator_config
from strategies import session_manifest, sessions
from testrun import NAMESPACE_PREFIX, RESTRICTED_LABELS

pytestmark = pytest.mark.integration

DRY_RUN = "All"
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# With the start-up CPU boost, so admission sees boosted limits too.
CONFIG = kwok_operator_config("corral-system", startupCpuLimit="2")


@pytest.fixture(scope="module")
def dry_namespace(core: client.CoreV1Api, crd: None) -> Iterator[str]:
    name = f"{NAMESPACE_PREFIX}dry-run-{uuid.uuid4().hex[:4]}"
    meta = client.V1ObjectMeta(name=name, labels=RESTRICTED_LABELS)
    core.create_namespace(client.V1Namespace(metadata=meta))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _in_namespace(session: api.AgentSession, namespace: str) -> api.AgentSession:
    meta = session.metadata.model_copy(update={"namespace": namespace})
    return session.model_copy(update={"metadata": meta})


def _creator(api_client: client.ApiClient, kind: str) -> Callable[..., Any]:
    core = client.CoreV1Api(api_client)
    networking = client.NetworkingV1Api(api_client)
    return {
        "Pod": core.create_namespaced_pod,
        "Service": core.create_namespaced_service,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
        "NetworkPolicy": networking.create_namespaced_network_policy,
    }[kind]


def dry_run_create(api_client: client.ApiClient, manifest: Manifest) -> dict[str, Any]:
    """Create `manifest` with dryRun=All; the server's answer as a wire-format dict."""
    create = _creator(api_client, manifest["kind"])
    try:
        created = create(manifest["metadata"]["namespace"], manifest, dry_run=DRY_RUN)
    except ApiException as error:
        shown = json.dumps(manifest, indent=1)[:4000]
        raise AssertionError(
            f"{manifest['kind']} refused ({error.status}): {error.body}\n{shown}"
        ) from error
    answer: dict[str, Any] = api_client.sanitize_for_serialization(created)
    return answer


@given(session=sessions())
@EXAMPLES
def test_generated_sessions_are_accepted(
    custom: client.CustomObjectsApi, dry_namespace: str, session: api.AgentSession
) -> None:
    manifest = session_manifest(_in_namespace(session, dry_namespace))
    try:
        created = custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, dry_namespace, api.PLURAL, manifest, dry_run=DRY_RUN
        )
    except ApiException as error:
        raise AssertionError(f"refused ({error.status}): {error.body}\n{manifest}") from error
    assert created["metadata"]["name"] == session.metadata.name
    # What the server stores parses back into the very spec that was drawn.
    assert api.AgentSessionSpec.model_validate(created["spec"]) == session.spec


@given(session=sessions())
@EXAMPLES
def test_rendered_children_are_accepted(
    api_client: client.ApiClient, dry_namespace: str, session: api.AgentSession
) -> None:
    children = render_children(_in_namespace(session, dry_namespace), CONFIG, attempt=1)
    kinds = [child["kind"] for child in children.all()]
    expected = ["NetworkPolicy", "Service", "Pod"]
    if session.spec.pattern == api.Pattern.HYBRID:
        expected.insert(0, "PersistentVolumeClaim")
    assert kinds == expected
    answers = {}
    for manifest in children.all():
        answer = dry_run_create(api_client, manifest)
        assert answer["metadata"]["name"] == manifest["metadata"]["name"]
        assert answer["metadata"]["ownerReferences"][0]["uid"] == session.metadata.uid
        answers[manifest["kind"]] = answer
    # Admission left the hardening alone (no mutation weakened it on the way in).
    pod = answers["Pod"]
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["automountServiceAccountToken"] is False
    # Requests as the spec asked, limits too but for a start-up CPU boost (the server may
    # rewrite a quantity in canonical form).
    resources = session.spec.resources
    wanted = {"cpu": resources.cpu, "memory": resources.memory, "ephemeral-storage": resources.disk}
    boost = startup_cpu_limit(session.spec, CONFIG)
    for part, asked in (
        ("requests", wanted),
        ("limits", wanted if boost is None else {**wanted, "cpu": boost}),
    ):
        assert {k: parse_quantity(v) for k, v in container["resources"][part].items()} == {
            k: parse_quantity(v) for k, v in asked.items()
        }, part


@pytest.mark.parametrize("pattern", list(api.Pattern))
def test_dry_run_enforces_pod_security(
    api_client: client.ApiClient, dry_namespace: str, pattern: api.Pattern
) -> None:
    """The check above can fail: a pod that breaks `restricted` is refused on dry run."""
    specs = {
        api.Pattern.EPHEMERAL: {"pattern": "Ephemeral", "prompt": "x"},
        api.Pattern.SHARED: {"pattern": "Shared", "agents": [{"name": "a"}, {"name": "b"}]},
    }
    session = api.AgentSession.model_validate(
        {
            "metadata": {"name": "weak", "namespace": dry_namespace, "uid": str(uuid.uuid4())},
            "spec": specs.get(pattern, {"pattern": pattern.value}),
        }
    )
    pod = render_children(session, OperatorConfig(), attempt=1).pod
    dry_run_create(api_client, pod)  # as rendered: admitted
    container = pod["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["securityContext"]["capabilities"]
    with pytest.raises(AssertionError) as refused:
        dry_run_create(api_client, pod)
    assert "violates PodSecurity" in str(refused.value)
    assert "allowPrivilegeEscalation" in str(refused.value)
