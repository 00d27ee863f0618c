"""The chart's activity token key: one Secret, mounted in every replica, named in the config."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from test_helm_schema import NAMESPACE, one, render

from corral.config import OperatorConfig


def _config(manifests: list[dict[str, Any]]) -> OperatorConfig:
    body = yaml.safe_load(one(manifests, "ConfigMap")["data"]["config.yaml"])
    return OperatorConfig.model_validate(body)


def _mount_of(manifests: list[dict[str, Any]], volume: str) -> tuple[dict[str, Any], str]:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    [found] = [v for v in pod["volumes"] if v["name"] == volume]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume]
    assert mount["readOnly"] is True
    return found, mount["mountPath"]


def test_the_chart_makes_one_random_key_and_every_replica_reads_it(tmp_path: Path) -> None:
    manifests = render(tmp_path)
    secret = one(manifests, "Secret")
    assert secret["metadata"]["namespace"] == NAMESPACE
    key = base64.b64decode(secret["data"]["key"])
    assert len(key) >= 32
    volume, path = _mount_of(manifests, "activity-key")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert _config(manifests).activity_key_file == f"{path}/key"
    assert [i["path"] for i in volume["secret"]["items"]] == ["key"]


def test_an_existing_secret_replaces_the_charts(tmp_path: Path) -> None:
    manifests = render(tmp_path, {"activityReporting": {"existingSecret": "my-activity-key"}})
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    volume, path = _mount_of(manifests, "activity-key")
    assert volume["secret"]["secretName"] == "my-activity-key"
    assert _config(manifests).activity_key_file == f"{path}/key"


def test_the_gateway_alone_still_needs_the_key(tmp_path: Path) -> None:
    manifests = render(tmp_path, None, "activityReporting.enabled=false")
    [secret] = [m for m in manifests if m["kind"] == "Secret"]
    config = _config(manifests)
    assert config.activity_url is None and config.activity_key_file is not None
    gateway = one(manifests, "Deployment", gateway=True)["spec"]["template"]["spec"]
    mounted = {v["name"]: v for v in gateway["volumes"]}["session-key"]
    assert mounted["secret"]["secretName"] == secret["metadata"]["name"]


def test_no_activity_reporting_no_key(tmp_path: Path) -> None:
    manifests = render(tmp_path, None, "activityReporting.enabled=false", "gateway.enabled=false")
    assert [m for m in manifests if m["kind"] == "Secret"] == []
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert "activity-key" not in [v["name"] for v in pod["volumes"]]
    assert _config(manifests).activity_key_file is None


def test_the_operator_user_can_read_the_key(tmp_path: Path) -> None:
    """The key is mounted 0400 and owned by root; the operator runs as a non-root user. The
    kubelet makes a Secret file group-readable by the pod's fsGroup (0440), so the pod must
    set fsGroup to its own group, or the operator dies on PermissionError at start."""
    manifests = render(tmp_path)
    volume, _ = _mount_of(manifests, "activity-key")
    security = one(manifests, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    mode = volume["secret"].get("defaultMode", 0o644)
    world_readable = bool(mode & 0o004)
    group_readable = security.get("fsGroup") == security["runAsGroup"]
    assert security["runAsNonRoot"] is True
    assert world_readable or group_readable, (oct(mode), security)
