"""The session pod: hardening, limits, volumes, environment, lifecycle."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from corral.api import runtime
from corral.api.v1alpha1 import AgentSession, AgentSessionSpec
from corral.config import OperatorConfig
from corral.render import RenderError, pod_name, render_pod, restart_hash
from corral.render.pod import (
    ATTEMPT_ANNOTATION,
    RESTART_HASH_ANNOTATION,
    STARTUP_SECONDS,
    overridden_selector_keys,
)

SessionFactory = Callable[..., AgentSession]
PATTERNS = ["Ephemeral", "LongRunning", "Hybrid", "Shared"]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(pod)["env"]}


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def mounts(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(pod)["volumeMounts"]}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pod_is_hardened(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    pod = render_pod(make_session(pattern), config, 0)
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": runtime.RUNNER_UID,
        "runAsGroup": runtime.RUNNER_GID,
        "fsGroup": runtime.RUNNER_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container(pod)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec


def test_requests_equal_limits_but_the_start_up_cpu_limit(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    session = make_session(resources={"cpu": "750m", "memory": "2Gi", "disk": "3Gi"})
    resources = container(render_pod(session, config, 0))["resources"]
    expected = {"cpu": "750m", "memory": "2Gi", "ephemeral-storage": "3Gi"}
    assert resources == {"requests": expected, "limits": {**expected, "cpu": "2000m"}}
    unboosted = config.model_copy(update={"startup_cpu_limit": None})
    resources = container(render_pod(session, unboosted, 0))["resources"]
    assert resources == {"requests": expected, "limits": expected}


@pytest.mark.parametrize("pattern", ["Ephemeral", "LongRunning", "Shared"])
def test_state_lives_in_size_limited_empty_dirs(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    pod = render_pod(make_session(pattern, resources={"disk": "4Gi"}), config, 0)
    vols = volumes(pod)
    assert vols["state"]["emptyDir"] == {"sizeLimit": "4Gi"}
    assert vols["home"]["emptyDir"] == {"sizeLimit": "1Gi"}
    assert vols["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
    paths = mounts(pod)
    assert paths[runtime.STATE_DIR]["name"] == "state"
    assert paths[runtime.HOME_DIR]["name"] == "home"
    assert paths[runtime.TMP_DIR]["name"] == "tmp"
    assert all(v.get("emptyDir", {}).get("medium") != "Memory" for v in vols.values())


def test_hybrid_state_lives_on_its_claim(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    pod = render_pod(make_session("Hybrid", name="keeper"), config, 3)
    state = volumes(pod)["state"]
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "keeper-state"}}
    assert "emptyDir" in volumes(pod)["home"]


def test_spec_reaches_the_pod_through_the_downward_api(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    pod = render_pod(make_session("Ephemeral", prompt="Count to 3."), config, 0)
    spec_volume = volumes(pod)["session-spec"]["downwardAPI"]
    (item,) = spec_volume["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{runtime.SPEC_ANNOTATION}']"
    assert f"{runtime.SPEC_DIR}/{item['path']}" == runtime.SPEC_FILE
    assert mounts(pod)[runtime.SPEC_DIR]["readOnly"] is True
    spec = AgentSessionSpec.model_validate_json(
        pod["metadata"]["annotations"][runtime.SPEC_ANNOTATION]
    )
    assert spec.prompt == "Count to 3."
    assert spec.model == config.default_model  # defaults resolved for the runner


def test_spec_model_wins_over_the_default(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    pod = render_pod(make_session(model="claude-opus-4-1"), config, 0)
    body = json.loads(pod["metadata"]["annotations"][runtime.SPEC_ANNOTATION])
    assert body["model"] == "claude-opus-4-1"


def test_api_key_is_referenced_never_copied(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    session = make_session(credentials={"secretName": "anthropic", "key": "api-key"})
    key = env(render_pod(session, config, 0))[runtime.ENV_API_KEY]
    assert "value" not in key
    assert key["valueFrom"] == {
        "secretKeyRef": {"name": "anthropic", "key": "api-key", "optional": False}
    }


def test_no_credentials_means_no_key(make_session: SessionFactory, config: OperatorConfig) -> None:
    assert runtime.ENV_API_KEY not in env(render_pod(make_session(), config, 0))


def test_operator_default_credentials(make_session: SessionFactory) -> None:
    config = OperatorConfig.model_validate(
        {
            "defaultCredentials": {"secretName": "shared-key"},
            "defaultAnthropicBaseUrl": "http://gw:80",
        }
    )
    variables = env(render_pod(make_session(), config, 0))
    assert variables[runtime.ENV_API_KEY]["valueFrom"]["secretKeyRef"]["name"] == "shared-key"
    assert variables[runtime.ENV_BASE_URL]["value"] == "http://gw:80"


def test_base_url_of_the_session_wins(make_session: SessionFactory) -> None:
    config = OperatorConfig(default_anthropic_base_url="http://default:80")
    session = make_session(credentials={"secretName": "k", "baseUrl": "https://proxy.example"})
    assert (
        env(render_pod(session, config, 0))[runtime.ENV_BASE_URL]["value"]
        == "https://proxy.example"
    )
    assert runtime.ENV_BASE_URL not in env(render_pod(make_session(), OperatorConfig(), 0))


def test_environment(make_session: SessionFactory, config: OperatorConfig) -> None:
    variables = env(render_pod(make_session(name="s1", namespace="ns1"), config, 0))
    assert variables[runtime.ENV_DISABLE_TRAFFIC]["value"] == "1"
    assert variables[runtime.ENV_SESSION_NAME]["value"] == "s1"
    assert variables[runtime.ENV_SESSION_NAMESPACE]["value"] == "ns1"
    assert variables[runtime.ENV_SESSION_FILE]["value"] == runtime.SPEC_FILE
    assert variables["HOME"]["value"] == runtime.HOME_DIR


def test_runner_command_probes_and_port(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    c = container(render_pod(make_session(), config, 0))
    assert c["name"] == runtime.CONTAINER_NAME
    assert c["args"][:10] == [
        "corral",
        "runner",
        "--session",
        runtime.SPEC_FILE,
        "--workspace",
        runtime.WORKSPACE_DIR,
        "--state-dir",
        runtime.STATE_DIR,
        "--port",
        str(runtime.RUNNER_PORT),
    ]
    assert c["ports"] == [{"name": "http", "containerPort": runtime.RUNNER_PORT, "protocol": "TCP"}]
    # No startup probe: it would run only on its period's ticks, while the kubelet runs a
    # readiness probe at once when it sees the container running. The runner holds that
    # first probe's answer until it is ready; the timeout covers the hold.
    assert "startupProbe" not in c
    readiness = c["readinessProbe"]
    assert readiness["httpGet"] == {
        "path": f"/readyz?wait={runtime.READY_HOLD_SECONDS}",
        "port": "http",
    }
    assert readiness["timeoutSeconds"] > runtime.READY_HOLD_SECONDS
    # A missed early probe costs at most a short period; a runner that stops answering is
    # still given about 10 s before its pod leaves the Service.
    assert readiness["periodSeconds"] <= 2
    assert readiness["periodSeconds"] * readiness["failureThreshold"] >= 10
    assert "initialDelaySeconds" not in readiness
    # That first probe comes at the kubelet's first sync that sees the container running,
    # which waits for the postStart hook: it returns once the runner listens, so the probe
    # is never refused (an Unhealthy Warning).
    hook = c["lifecycle"]["postStart"]["exec"]["command"]
    assert hook[:5] == [
        "python",
        "-m",
        "corral.probe",
        f"--port={runtime.RUNNER_PORT}",
        "--listening",
    ]
    # Liveness counts only once a start has had its time (a startup probe's job before).
    liveness = c["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    assert liveness["initialDelaySeconds"] == STARTUP_SECONDS
    assert c["terminationMessagePath"] == runtime.TERMINATION_LOG
    assert c["image"] == config.default_image


def test_image_of_the_session_wins(make_session: SessionFactory, config: OperatorConfig) -> None:
    pod = render_pod(make_session(image="registry.example/runner:2"), config, 0)
    assert container(pod)["image"] == "registry.example/runner:2"


def test_ephemeral_runs_once_within_a_deadline(make_session: SessionFactory) -> None:
    config = OperatorConfig(default_active_deadline_seconds=600)
    pod = render_pod(make_session("Ephemeral"), config, 0)
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    pod = render_pod(make_session("Ephemeral", activeDeadlineSeconds=60), config, 0)
    assert pod["spec"]["activeDeadlineSeconds"] == 60
    # It exits when done: a probe landing after its port closed would be a Warning Event.
    runner = container(pod)
    assert "livenessProbe" not in runner and "readinessProbe" not in runner
    assert "lifecycle" not in runner
    # Its startup probe waits inside the container (corral.probe) rather than failing
    # until the runner listens: each failed probe would be a Warning Event.
    startup = runner["startupProbe"]
    command = startup["exec"]["command"]
    assert command[:4] == ["python", "-m", "corral.probe", f"--port={runtime.RUNNER_PORT}"]
    assert "--ready=/readyz" in command and "--live=/healthz" in command
    within = float(next(a for a in command if a.startswith("--within=")).split("=")[1])
    assert within == STARTUP_SECONDS
    assert startup["timeoutSeconds"] > within and startup["failureThreshold"] == 1
    # The kubelet runs startup probes only on period ticks and the first tick comes before
    # the container runs: Ready waits for the second tick, so the period must be short.
    assert startup["periodSeconds"] <= 2


@pytest.mark.parametrize("pattern", ["LongRunning", "Hybrid", "Shared"])
def test_long_lived_pods_restart_in_place(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    spec = render_pod(make_session(pattern), config, 0)["spec"]
    assert spec["restartPolicy"] == "Always"
    assert "activeDeadlineSeconds" not in spec


def test_hybrid_gets_time_to_flush(make_session: SessionFactory, config: OperatorConfig) -> None:
    hybrid = render_pod(make_session("Hybrid"), config, 0)
    other = render_pod(make_session("LongRunning"), config, 0)
    assert hybrid["spec"]["terminationGracePeriodSeconds"] == 120
    assert other["spec"]["terminationGracePeriodSeconds"] == 30
    # The runner drains for less than the grace period, so it is never killed mid-flush.
    drain = container(hybrid)["args"]
    assert int(drain[drain.index("--drain-seconds") + 1]) < 120


def test_scheduling_is_configurable(make_session: SessionFactory) -> None:
    kwok = {
        "key": "kwok.x-k8s.io/node",
        "operator": "Equal",
        "value": "fake",
        "effect": "NoSchedule",
    }
    config = OperatorConfig.model_validate(
        {"tolerations": [kwok], "nodeSelector": {"type": "kwok"}, "runtimeClassName": "gvisor"}
    )
    spec = render_pod(make_session(), config, 0)["spec"]
    assert spec["tolerations"] == [kwok]
    assert spec["nodeSelector"] == {"type": "kwok"}
    assert spec["runtimeClassName"] == "gvisor"
    default = render_pod(make_session(), OperatorConfig(), 0)["spec"]
    assert "tolerations" not in default and "nodeSelector" not in default


KWOK = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_a_session_adds_its_own_placement(make_session: SessionFactory) -> None:
    scheduling = {"nodeSelector": {"pool": "gpu"}, "tolerations": [GPU]}
    session = make_session(scheduling=scheduling)
    # Without an operator placement: the session's alone.
    spec = render_pod(session, OperatorConfig(), 0)["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [GPU]
    # With one: both, the operator's tolerations first.
    config = OperatorConfig.model_validate(
        {"tolerations": [KWOK], "nodeSelector": {"kubernetes.io/os": "linux"}}
    )
    spec = render_pod(session, config, 0)["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "gpu"}
    assert spec["tolerations"] == [KWOK, GPU]
    # An empty scheduling is no scheduling.
    empty = render_pod(make_session(scheduling={}), OperatorConfig(), 0)["spec"]
    assert "nodeSelector" not in empty and "tolerations" not in empty


def test_on_a_shared_selector_key_the_operator_wins(make_session: SessionFactory) -> None:
    """The operator's selector is the platform's constraint: a session narrows it, never
    lifts it (e.g. out of the agent pool onto the control plane's nodes)."""
    config = OperatorConfig.model_validate({"nodeSelector": {"pool": "agents", "zone": "a"}})
    session = make_session(scheduling={"nodeSelector": {"pool": "system", "gpu": "yes"}})
    spec = render_pod(session, config, 0)["spec"]
    assert spec["nodeSelector"] == {"pool": "agents", "zone": "a", "gpu": "yes"}
    assert overridden_selector_keys(session.spec, config) == ["pool"]
    # The same value is no conflict.
    agreeing = make_session(scheduling={"nodeSelector": {"pool": "agents"}})
    assert overridden_selector_keys(agreeing.spec, config) == []
    assert overridden_selector_keys(make_session().spec, config) == []


def test_tolerations_are_not_repeated(make_session: SessionFactory) -> None:
    config = OperatorConfig.model_validate({"tolerations": [KWOK]})
    # The operator's own, spelt with defaults left out; one of its own twice; an empty effect.
    same_as_kwok = {"key": KWOK["key"], "value": "fake", "effect": "NoSchedule"}
    everything = {"operator": "Exists"}
    session = make_session(
        scheduling={
            "tolerations": [same_as_kwok, GPU, GPU, everything, {**everything, "effect": ""}]
        }
    )
    spec = render_pod(session, config, 0)["spec"]
    assert spec["tolerations"] == [KWOK, GPU, everything]
    # What differs in any part is kept.
    later = {**GPU, "effect": "NoExecute", "tolerationSeconds": 60}
    spec = render_pod(make_session(scheduling={"tolerations": [GPU, later]}), config, 0)["spec"]
    assert spec["tolerations"] == [KWOK, GPU, later]


def test_scheduling_is_not_in_the_runners_spec_file(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    session = make_session(scheduling={"nodeSelector": {"pool": "gpu"}})
    carried = render_pod(session, config, 0)["metadata"]["annotations"][runtime.SPEC_ANNOTATION]
    assert "scheduling" not in json.loads(carried)
    assert (
        carried
        == render_pod(make_session(), config, 0)["metadata"]["annotations"][runtime.SPEC_ANNOTATION]
    )


def test_runner_extras_from_the_config(make_session: SessionFactory) -> None:
    config = OperatorConfig(runner_extra_args=["--fake-anthropic"], runner_env={"X": "1"})
    pod = render_pod(make_session(), config, 0)
    assert container(pod)["args"][-1] == "--fake-anthropic"
    assert env(pod)["X"] == {"name": "X", "value": "1"}


def test_pod_names_never_collide_with_a_predecessor(make_session: SessionFactory) -> None:
    session = make_session(name="demo")
    names = {pod_name(session, attempt) for attempt in range(50)}
    assert len(names) == 50
    assert all(n.startswith("demo-") and len(n) <= 63 for n in names)
    assert pod_name(session, 1) == pod_name(session, 1)
    # A new session of the same name (new uid) does not meet the old one's terminating pod.
    reborn = make_session(name="demo", uid="another-uid")
    assert pod_name(reborn, 0) != pod_name(session, 0)


def test_long_session_names_fit(make_session: SessionFactory, config: OperatorConfig) -> None:
    pod = render_pod(make_session(name="x" * 250), config, 7)
    assert len(pod["metadata"]["name"]) <= 63
    assert len(pod["metadata"]["labels"]["corral.dev/session"]) <= 63


def test_annotations(make_session: SessionFactory, config: OperatorConfig) -> None:
    session = make_session()
    annotations = render_pod(session, config, 4)["metadata"]["annotations"]
    assert annotations[ATTEMPT_ANNOTATION] == "4"
    assert annotations[RESTART_HASH_ANNOTATION] == restart_hash(session.spec, config.default_image)


def test_restart_hash_follows_only_what_needs_a_new_pod(make_session: SessionFactory) -> None:
    base = restart_hash(make_session("Shared").spec)
    # Applied live through the projected spec file:
    for live in (
        {"model": "claude-opus-4-1"},
        {"maxTurns": 3},
        {"systemPrompt": "Be brief."},
        {"allowedTools": ["Bash"]},
        {"agents": [{"name": "reviewer", "model": "m"}, {"name": "author"}]},
        {"network": {"allowPublicHttps": False}},
    ):
        assert restart_hash(make_session("Shared", **live).spec) == base, live
    # Need a new pod:
    for restart in (
        {"image": "other:1"},
        {"resources": {"memory": "4Gi"}},
        {"credentials": {"secretName": "other"}},
        {"agents": [{"name": "author"}, {"name": "tester"}]},
        {"scheduling": {"nodeSelector": {"pool": "gpu"}}},
        {"scheduling": {"tolerations": [GPU]}},
    ):
        assert restart_hash(make_session("Shared", **restart).spec) != base, restart


def test_restart_hash_follows_the_placement_not_its_spelling(
    make_session: SessionFactory,
) -> None:
    base = restart_hash(make_session().spec)
    # No placement, however written, keeps the hash of sessions made before the field
    # existed: an operator upgrade replaces no pod.
    for nothing in ({}, {"nodeSelector": {}}, {"tolerations": []}):
        assert restart_hash(make_session(scheduling=nothing).spec) == base, nothing

    def placed(**scheduling: Any) -> str:
        return restart_hash(make_session(scheduling=scheduling).spec)

    gpu = placed(nodeSelector={"pool": "gpu"}, tolerations=[GPU, KWOK])
    # The same placement written otherwise: the same pod.
    assert placed(nodeSelector={"pool": "gpu"}, tolerations=[KWOK, GPU]) == gpu
    assert placed(nodeSelector={"pool": "gpu"}, tolerations=[KWOK, GPU, GPU]) == gpu
    assert (
        placed(nodeSelector={"pool": "gpu"}, tolerations=[{**GPU, "effect": "NoSchedule"}, KWOK])
        == gpu
    )
    # Any change of it: a new pod.
    assert placed(nodeSelector={"pool": "cpu"}, tolerations=[GPU, KWOK]) != gpu
    assert placed(nodeSelector={"pool": "gpu"}, tolerations=[GPU]) != gpu
    assert placed(nodeSelector={"pool": "gpu"}, tolerations=[GPU, {**KWOK, "value": "x"}]) != gpu


def test_a_new_default_image_replaces_the_pods_that_use_it(make_session: SessionFactory) -> None:
    # An upgrade that changes the operator's default image reaches every session without
    # an image of its own, and only those.
    old, new = OperatorConfig(default_image="runner:1"), OperatorConfig(default_image="runner:2")
    default = make_session("LongRunning")
    pinned = make_session("LongRunning", image="mine:1")

    def annotation(session: Any, config: OperatorConfig) -> str:
        annotations = render_pod(session, config, 0)["metadata"]["annotations"]
        return str(annotations[RESTART_HASH_ANNOTATION])

    assert annotation(default, old) != annotation(default, new)
    assert annotation(pinned, old) == annotation(pinned, new)


def test_spec_too_large_for_an_annotation(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    agents = [
        {"name": f"a{i}", "prompt": "é" * 8192, "systemPrompt": "é" * 8192} for i in range(16)
    ]
    with pytest.raises(RenderError, match="shorten the prompts"):
        render_pod(make_session("Shared", agents=agents), config, 0)


def test_a_session_without_uid_cannot_own_children(
    make_session: SessionFactory, config: OperatorConfig
) -> None:
    with pytest.raises(RenderError, match="uid"):
        render_pod(make_session(uid=None), config, 0)


def test_attempt_must_not_be_negative(make_session: SessionFactory, config: OperatorConfig) -> None:
    with pytest.raises(ValueError, match="attempt"):
        render_pod(make_session(), config, -1)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_runner_command_parses_with_the_runner_cli(
    make_session: SessionFactory, config: OperatorConfig, pattern: str
) -> None:
    from corral.cli import build_parser

    rendered = container(render_pod(make_session(pattern), config, 0))
    # No `command`: the image's ENTRYPOINT (tini, PID 1) runs these args.
    assert "command" not in rendered
    command = rendered["args"]
    assert command[0] == "corral"
    args = build_parser(["runner"]).parse_args(command[1:])
    assert str(args.session) == runtime.SPEC_FILE
    assert args.port == runtime.RUNNER_PORT
