"""The chart's admin guardrails on the real API server: its ValidatingAdmissionPolicy and
bindings (admissionregistration.k8s.io/v1), rendered by `helm template` and applied with
SessionGuardrails, refuse AgentSessions over a namespace's limits with a message that
names the field and the fix, and leave other namespaces alone.

Sessions are created with a server-side dry run (admission runs, nothing is stored) except
where an UPDATE needs a stored object. The policy and bindings are cluster-scoped: their
names carry the run's id, and the module deletes them at the end (the SessionGuardrail CRD,
like the AgentSession CRD, stays). Namespaces are outside the run operator's `t<run>-*`
pattern, so no operator acts on the sessions here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.api.v1alpha1 import GROUP, PLURAL, VERSION
from corral.testing.kube import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "corral"
RUN = uuid.uuid4().hex[:5]
RELEASE = f"g{RUN}"
SYSTEM = f"g{RUN}-system"  # the release namespace (nothing of the guardrails lives there)
TEAM = f"g{RUN}-team"  # restricted by the chart's values
LATER = f"g{RUN}-later"  # restricted by a hand-made SessionGuardrail, after a session exists
OPEN = f"g{RUN}-open"  # without a SessionGuardrail
AUDIT_TEAM = f"g{RUN}-audit-team"  # its SessionGuardrail is in audit mode
SMALL = f"g{RUN}-small"  # a hand-made SessionGuardrail with little storage
NAMESPACES = (TEAM, LATER, OPEN, AUDIT_TEAM, SMALL)
GUARDRAIL = f"SessionGuardrail {RELEASE}-corral"
# Group of a stand-in CRD that has spec.network.allowedDomains (the egress proxy's field)
# whether or not the AgentSession CRD has it yet.
DOMAINS_GROUP = f"g{RUN}.corral.test"
TEAM_LIMITS: dict[str, Any] = {
    "allowedImagePrefixes": ["registry.example.com/corral/"],
    "allowedEgressCidrs": ["10.20.0.0/16", "192.0.2.7/32"],
    "allowedDomains": ["github.com", "*.pypi.org", "git.internal.example:8443"],
    "maxResources": {"cpu": "2", "memory": "4Gi", "disk": "10Gi"},
    "maxStorage": "20Gi",
    "maxBudgetUsd": 5,
}
# A spec inside every TEAM limit: public HTTPS (every host) is outside allowedDomains.
COMPLIANT: dict[str, Any] = {
    "pattern": "LongRunning",
    "maxBudgetUsd": 2,
    "network": {"allowPublicHttps": False},
}


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    from corral.cluster.build import binary_path

    done = subprocess.run(
        [str(binary_path("kubectl")), f"--kubeconfig={kubeconfig}", *args],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def render_guardrails(release: str, namespace: str, values: dict[str, Any]) -> list[Any]:
    """The chart's guardrail objects for a release in `namespace`."""
    from corral.cluster.build import binary_path, ensure_built

    ensure_built(["helm"])
    done = subprocess.run(
        [str(binary_path("helm")), "template", release, str(CHART), "--namespace", namespace,
         "--show-only", "templates/guardrails.yaml", "--values", "-"],
        input=yaml.safe_dump(values), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def install_guardrail_crd(kubeconfig: Path) -> None:
    """The SessionGuardrail CRD, generated from the models (left installed, as is the
    AgentSession CRD: other runs on this cluster use it)."""
    manifest = subprocess.run(
        [sys.executable, "-m", "corral.cli", "crd", "--guardrails"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/sessionguardrails.corral.dev")  # fmt: skip


def cluster_names(objects: list[Any]) -> list[str]:
    return [
        f"{o['kind'].lower()}.admissionregistration.k8s.io/{o['metadata']['name']}"
        for o in objects
        if o["kind"].startswith("ValidatingAdmissionPolicy")
    ]


@dataclass
class Admission:
    """Sessions sent through admission: dry-run creates, and real ones where needed."""

    custom: client.CustomObjectsApi

    def create(
        self, namespace: str, spec: dict[str, Any], name: str = "s", dry_run: bool = True
    ) -> tuple[str | None, list[str]]:
        """The refusal message (None when admitted) and the warnings of the response."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentSession",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        extra = {"dry_run": "All"} if dry_run else {}
        try:
            _, _, headers = self.custom.create_namespaced_custom_object_with_http_info(
                GROUP, VERSION, namespace, PLURAL, body, **extra
            )
        except ApiException as error:
            assert error.status == 403, error.body
            return str(json.loads(error.body)["message"]), []
        warning = headers.get("Warning")
        return None, [str(warning)] if warning else []

    def refusal(self, namespace: str, spec: dict[str, Any]) -> str | None:
        return self.create(namespace, spec)[0]

    def patch(self, namespace: str, name: str, spec: dict[str, Any]) -> str | None:
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
            )
        except ApiException as error:
            assert error.status == 403, error.body
            return str(json.loads(error.body)["message"])
        return None


@pytest.fixture(scope="module")
def admission(kubeconfig: Path, crd: None, api_client: client.ApiClient) -> Iterator[Admission]:
    install_guardrail_crd(kubeconfig)
    core = client.CoreV1Api(api_client)
    for name in NAMESPACES:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    audit_limits = {"mode": "audit", "allowedImagePrefixes": ["ok.example/"]}
    values = {"guardrails": {"namespaces": {TEAM: TEAM_LIMITS, AUDIT_TEAM: audit_limits}}}
    objects = render_guardrails(RELEASE, SYSTEM, values)
    made = cluster_names(objects)
    try:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
        checks = Admission(client.CustomObjectsApi(api_client))
        # Policies, bindings and params reach admission through informers: wait for them.
        bad_image = {**COMPLIANT, "image": "evil.example/runner:1"}
        wait_for(lambda: checks.refusal(TEAM, bad_image), timeout=60, what="the policy in force")
        wait_for(
            lambda: checks.create(AUDIT_TEAM, bad_image)[1], timeout=60,
            what="the audit binding in force",
        )  # fmt: skip
        yield checks
    finally:
        kubectl(kubeconfig, "delete", "--ignore-not-found", *made)
        for name in NAMESPACES:
            core.delete_namespace(name, propagation_policy="Background")


def test_a_disallowed_image_is_refused_with_the_field_and_the_fix(admission: Admission) -> None:
    message = admission.refusal(TEAM, {**COMPLIANT, "image": "evil.example/runner:1"})
    assert message is not None
    assert (
        f"spec.image evil.example/runner:1 is not allowed in namespace {TEAM} "
        f"({GUARDRAIL}): use an image that starts with registry.example.com/corral/, "
        "or remove spec.image to run the operator default image"
    ) in message


def test_an_allowed_image_and_the_default_image_are_admitted(admission: Admission) -> None:
    assert (
        admission.refusal(TEAM, {**COMPLIANT, "image": "registry.example.com/corral/r:2"}) is None
    )
    assert admission.refusal(TEAM, COMPLIANT) is None  # no spec.image: the operator's default


def test_a_namespace_without_guardrails_is_not_restricted(admission: Admission) -> None:
    anything = {
        "pattern": "LongRunning",
        "image": "evil.example/runner:1",
        "resources": {"cpu": "64", "memory": "256Gi", "disk": "1Ti"},
        "network": {"egress": [{"cidr": "0.0.0.0/0"}]},
        "mcpServers": [{"name": "x", "url": "https://anywhere.example/mcp"}],
    }
    assert admission.refusal(OPEN, anything) is None


def egress(*cidrs: str) -> dict[str, Any]:
    return {**COMPLIANT, "network": {"allowPublicHttps": False,
                                     "egress": [{"cidr": c} for c in cidrs]}}  # fmt: skip


def test_egress_cidrs_must_lie_within_the_allowed_ones(admission: Admission) -> None:
    assert admission.refusal(TEAM, egress("10.20.5.0/24", "192.0.2.7/32")) is None
    message = admission.refusal(TEAM, egress("10.20.5.0/24", "10.0.0.0/8", "192.0.2.0/24"))
    assert message is not None
    assert (
        f"spec.network.egress cidr 10.0.0.0/8, 192.0.2.0/24 is not allowed in namespace {TEAM} "
        f"({GUARDRAIL}): use CIDRs within 10.20.0.0/16, 192.0.2.7/32, or remove the "
        "egress rule"
    ) in message
    assert "10.20.5.0/24" not in message.split("is not allowed")[0]


@pytest.mark.parametrize(
    ("resources", "field", "limit"),
    [
        ({"cpu": "2500m"}, "spec.resources.cpu 2500m", "2"),
        ({"memory": "5Gi"}, "spec.resources.memory 5Gi", "4Gi"),
        ({"disk": "11Gi"}, "spec.resources.disk 11Gi", "10Gi"),
    ],
)
def test_resources_over_the_maximum_are_refused(
    admission: Admission, resources: dict[str, str], field: str, limit: str
) -> None:
    message = admission.refusal(TEAM, {**COMPLIANT, "resources": resources})
    assert message is not None
    name = field.split(" ")[0]
    assert (
        f"{field} is more than the {limit} allowed in namespace {TEAM} ({GUARDRAIL}): "
        f"set {name} to at most {limit}"
    ) in message


def test_resources_and_storage_at_the_maximum_are_admitted(admission: Admission) -> None:
    at_max = {**COMPLIANT, "resources": {"cpu": "2000m", "memory": "4Gi", "disk": "10Gi"}}
    assert admission.refusal(TEAM, at_max) is None
    hybrid = {**COMPLIANT, "pattern": "Hybrid", "storage": {"size": "20Gi"}}
    assert admission.refusal(TEAM, hybrid) is None


def test_storage_over_the_maximum_is_refused(admission: Admission) -> None:
    message = admission.refusal(
        TEAM, {**COMPLIANT, "pattern": "Hybrid", "storage": {"size": "21Gi"}}
    )
    assert message is not None
    assert "spec.storage.size 21Gi is more than the 20Gi allowed" in message
    assert "set spec.storage.size to at most 20Gi" in message


def test_a_hybrid_session_without_storage_counts_the_default_volume(
    admission: Admission, kubeconfig: Path
) -> None:
    """Left out, spec.storage is the API's 5Gi: what the operator's PVC asks for."""
    hybrid = {**COMPLIANT, "pattern": "Hybrid"}
    assert admission.refusal(TEAM, hybrid) is None  # 5Gi, under TEAM's 20Gi
    limits = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SessionGuardrail",
        "metadata": {"name": "small", "namespace": SMALL}, "spec": {"maxStorage": "2Gi"},
    }  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(limits))
    wait_for(
        lambda: admission.refusal(SMALL, {**hybrid, "storage": {"size": "3Gi"}}),
        timeout=60,
        what="the small guardrail",
    )
    refused = admission.refusal(SMALL, hybrid)
    assert refused is not None and "spec.storage.size 5Gi (the default) is more than" in refused
    assert admission.refusal(SMALL, {**COMPLIANT, "pattern": "LongRunning"}) is None  # no PVC


def test_a_budget_over_the_maximum_or_missing_is_refused(admission: Admission) -> None:
    assert admission.refusal(TEAM, {**COMPLIANT, "maxBudgetUsd": 5}) is None
    over = admission.refusal(TEAM, {**COMPLIANT, "maxBudgetUsd": 7.5})
    assert over is not None
    assert (
        f"spec.maxBudgetUsd 7.5 is more than the 5 USD allowed in namespace {TEAM} "
        f"({GUARDRAIL}): set spec.maxBudgetUsd to at most 5"
    ) in over
    unbounded = {k: v for k, v in COMPLIANT.items() if k != "maxBudgetUsd"}
    missing = admission.refusal(TEAM, unbounded)
    assert missing is not None
    assert f"spec.maxBudgetUsd is required in namespace {TEAM}" in missing
    assert "set spec.maxBudgetUsd to at most 5" in missing


def test_public_https_is_outside_a_domain_allowlist(admission: Admission) -> None:
    """allowPublicHttps (the CRD's default: true) opens every public host on 443."""
    message = admission.refusal(TEAM, {"pattern": "LongRunning", "maxBudgetUsd": 1})
    assert message is not None
    assert message.endswith(
        "spec.network.allowPublicHttps: true (every public host on port 443): not allowed in "
        f"namespace {TEAM} ({GUARDRAIL}), which allows github.com, *.pypi.org, "
        "git.internal.example:8443. Fix: remove the entries and MCP servers outside that "
        "list, and set spec.network.allowPublicHttps: false (name the hosts in "
        "spec.network.allowedDomains)"
    ), message


def mcp(*urls: str) -> dict[str, Any]:
    servers = [{"name": f"m{i}", "url": url} for i, url in enumerate(urls)]
    return {**COMPLIANT, "mcpServers": servers}


def test_mcp_server_hosts_must_match_the_allowed_domains(admission: Admission) -> None:
    """The egress proxy lets a session reach its MCP servers' hosts: they count as domains."""
    allowed = mcp(
        "https://github.com/mcp", "https://files.pypi.org/x", "http://a.b.pypi.org:9000/",
        "https://git.internal.example:8443/mcp",
    )  # fmt: skip
    assert admission.refusal(TEAM, allowed) is None
    for url in (
        "https://api.github.com/mcp",  # github.com is exact: no subdomains
        "https://pypi.org/x",  # *.pypi.org: subdomains only
        "https://git.internal.example/mcp",  # port 443, and only 8443 is allowed
        "https://evil.example/?github.com",
    ):
        message = admission.refusal(TEAM, mcp("https://github.com/mcp", url))
        assert message is not None, url
        assert f"denied request: spec.mcpServers m1 (url {url}): not allowed in" in message


@pytest.fixture(scope="module")
def domains_crd(
    kubeconfig: Path, admission: Admission, api_client: client.ApiClient
) -> Iterator[str]:
    """A copy of the AgentSession CRD in a run-owned group, with spec.network.allowedDomains
    (added by the egress proxy), and a copy of the chart's policy bound to that group."""
    generated = subprocess.run(
        [sys.executable, "-m", "corral.cli", "crd"], capture_output=True, text=True, check=True
    ).stdout
    crd = yaml.safe_load(generated)
    crd["metadata"]["name"] = f"{PLURAL}.{DOMAINS_GROUP}"
    crd["spec"]["group"] = DOMAINS_GROUP
    for key in ("shortNames", "categories"):  # kubectl's short names stay the real CRD's
        crd["spec"]["names"].pop(key, None)
    for version in crd["spec"]["versions"]:
        network = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "network"
        ]
        network["properties"].setdefault(
            "allowedDomains", {"type": "array", "items": {"type": "string"}}
        )
    objects = render_guardrails(
        RELEASE, SYSTEM, {"guardrails": {"namespaces": {TEAM: TEAM_LIMITS}}}
    )
    policy = next(o for o in objects if o["kind"] == "ValidatingAdmissionPolicy")
    binding = next(
        o for o in objects
        if o["kind"] == "ValidatingAdmissionPolicyBinding"
        and o["spec"]["validationActions"] == ["Deny"]
    )  # fmt: skip
    name = f"{policy['metadata']['name']}-domains"
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    policy["spec"]["matchConstraints"]["resourceRules"][0]["apiGroups"] = [DOMAINS_GROUP]
    made = [f"crd/{crd['metadata']['name']}", *cluster_names([policy, binding])]
    try:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all([crd, policy, binding]))
        kubectl(kubeconfig, "wait", "--for=condition=Established", made[0], "--timeout=60s")
        yield name
    finally:
        kubectl(kubeconfig, "delete", "--ignore-not-found", "--wait=false", *made)


def test_allowed_domains_must_match_the_namespace_allowlist(
    domains_crd: str, api_client: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api_client)

    def refusal(domains: list[str]) -> str | None:
        body = {
            "apiVersion": f"{DOMAINS_GROUP}/{VERSION}", "kind": "AgentSession",
            "metadata": {"name": "d", "namespace": TEAM},
            "spec": {**COMPLIANT, "network": {"allowPublicHttps": False,
                                              "allowedDomains": domains}},
        }  # fmt: skip
        try:
            custom.create_namespaced_custom_object(
                DOMAINS_GROUP, VERSION, TEAM, PLURAL, body, dry_run="All"
            )
        except ApiException as error:
            assert error.status == 403, error.body
            return str(json.loads(error.body)["message"])
        return None

    wait_for(lambda: refusal(["evil.example"]), timeout=60, what="the domains policy in force")
    allowed = ["github.com", "files.pypi.org", "*.pypi.org", "*.cdn.pypi.org",
               "files.pypi.org:443", "git.internal.example:8443"]  # fmt: skip
    assert refusal(allowed) is None
    for refused in ("evil.example", "api.github.com", "*.github.com", "pypi.org", "*",
                    "git.internal.example", "git.internal.example:22", "*.org"):  # fmt: skip
        message = refusal(["github.com", refused])
        assert message is not None, refused
        assert f"spec.network.allowedDomains entry {refused}: not allowed in namespace {TEAM}" in (
            message
        ), message


def test_an_audit_mode_guardrail_admits_with_a_warning(admission: Admission) -> None:
    """corral.dev/guardrail-mode=audit: the binding with validationActions [Warn, Audit]."""
    message, warnings = admission.create(AUDIT_TEAM, {"pattern": "LongRunning", "image": "x/y:1"})
    assert message is None
    [warning] = warnings
    assert f"spec.image x/y:1 is not allowed in namespace {AUDIT_TEAM}" in warning
    _, none = admission.create(AUDIT_TEAM, {"pattern": "LongRunning", "image": "ok.example/y:1"})
    assert none == []


def test_a_guardrail_added_later_checks_changes_only(
    admission: Admission, kubeconfig: Path
) -> None:
    """A session made before its namespace was restricted can still be changed in what the
    guardrail does not cover (suspend; the operator's finalizer and status writes too), but
    not moved further outside it. The guardrail here is written by hand, not by the chart."""
    big = {"pattern": "LongRunning", "image": "evil.example/r:1", "resources": {"cpu": "8"}}
    assert admission.create(LATER, big, name="old", dry_run=False)[0] is None
    limits = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SessionGuardrail",
        "metadata": {"name": "later", "namespace": LATER},
        "spec": {"maxResources": {"cpu": "1"},
                 "allowedImagePrefixes": ["a.example/", "b.example/"]},
    }  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(limits))
    wait_for(lambda: admission.refusal(LATER, big), timeout=60, what="the later guardrail")

    assert admission.patch(LATER, "old", {"suspend": True}) is None
    cpu = admission.patch(LATER, "old", {"resources": {"cpu": "9"}})
    assert cpu is not None and "spec.resources.cpu 9 is more than the 1 allowed" in cpu
    image = admission.patch(LATER, "old", {"image": "evil.example/r:2"})
    assert image is not None
    assert "use an image that starts with a.example/ or b.example/" in image
    assert admission.patch(LATER, "old", {"image": "b.example/r:2"}) is None


def test_the_api_server_refuses_a_malformed_guardrail(
    admission: Admission, api_client: client.ApiClient
) -> None:
    """What the models check (tests/unit/test_guardrail_crd.py), the CRD checks on write."""
    custom = client.CustomObjectsApi(api_client)
    for spec, message in (
        ({"allowedEgressCidrs": ["10.0.0.0/8", "10.0.0.0"]},
         "spec.allowedEgressCidrs entries must be CIDRs such as 10.20.0.0/16"),
        ({"allowedDomains": ["https://github.com"]}, "spec.allowedDomains[0]: Invalid value"),
        ({"maxResources": {"cpu": "two"}}, "spec.maxResources.cpu: Invalid value"),
    ):  # fmt: skip
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "SessionGuardrail",
            "metadata": {"name": "bad", "namespace": OPEN}, "spec": spec,
        }  # fmt: skip
        with pytest.raises(ApiException) as refused:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, OPEN, "sessionguardrails", body, dry_run="All"
            )
        assert refused.value.status == 422
        assert message in json.loads(refused.value.body)["message"], refused.value.body
