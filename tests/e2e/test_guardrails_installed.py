"""The chart's admission guardrails as installed by `helm install` on the e2e cluster: an
admin's SessionGuardrail in a namespace makes the API server refuse a session whose image
is outside the allowed prefixes, and admits the default image."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import GROUP, PLURAL, VERSION, spec
from kubernetes import client
from kubernetes.client.rest import ApiException

from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

GUARDRAILS = "sessionguardrails"


def test_the_installed_policy_refuses_a_disallowed_image(
    operator: Any, custom: client.CustomObjectsApi, namespace: str
) -> None:
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        GUARDRAILS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SessionGuardrail",
            "metadata": {"name": "limits"},
            "spec": {"allowedImagePrefixes": ["registry.example.com/corral/"]},
        },
    )

    def session(name: str, **fields: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentSession",
            "metadata": {"name": name},
            "spec": spec("LongRunning", **fields),
        }

    def refusal() -> ApiException | None:
        try:
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                session("elsewhere", image="ghcr.io/someone/agent:1"),
                dry_run="All",
            )
        except ApiException as error:
            return error
        return None

    # The API server's admission sees a new SessionGuardrail (the policy's parameter) through
    # its informer, a moment after the create (as the integration test waits too).
    refused = wait_for(refusal, timeout=60, what="the installed policy in force")
    assert refused.status in (403, 422), refused
    assert "spec.image" in str(refused.body), refused.body
    assert "registry.example.com/corral/" in str(refused.body)

    # The operator's default image (no spec.image) is the admin's choice: admitted.
    admitted = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        session("default-image"),
        dry_run="All",
    )
    assert admitted["metadata"]["name"] == "default-image"
