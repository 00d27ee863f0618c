"""The chart's admission guardrails as installed by `helm install` on the e2e cluster: an
admin's SessionGuardrail in a namespace makes the API server refuse a session whose image
is outside the allowed prefixes, and admits the default image."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_support import GROUP, PLURAL, VERSION, spec
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.e2e

GUARDRAILS = "sessionguardrails"


def test_the_installed_policy_refuses_a_disallowed_image(
    operator: Any, custom: client.CustomObjectsApi, namespace: str
) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, GUARDRAILS,
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

    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL,
            session("elsewhere", image="ghcr.io/someone/agent:1"),
            dry_run="All",
        )
    assert refused.value.status in (403, 422), refused.value
    assert "spec.image" in str(refused.value.body), refused.value.body
    assert "registry.example.com/corral/" in str(refused.value.body)

    # The operator's default image (no spec.image) is the admin's choice: admitted.
    admitted = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        session("default-image"), dry_run="All",
    )
    assert admitted["metadata"]["name"] == "default-image"
