"""The session pod: one hardened runner container, its volumes and its limits.

Restart policy. Ephemeral pods never restart (`Never`): a failed run is a failed attempt,
and the operator decides about a new pod (spec.retries) with a fresh workspace, counting
attempts in status. Every other pattern restarts its container in place (`Always`): a crash
or an OOM kill then keeps the pod and its emptyDirs, so the workspace and the transcript
survive and the runner resumes the same SDK session. The operator replaces only a pod that
is gone (evicted, node lost, deleted).

Pod names are `<session>-<hash of session uid and attempt>`: a new pod never collides with
a predecessor that is still terminating, nor with a pod of an earlier session of the same
name.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from corral.api import runtime
from corral.api.activity import activity_token
from corral.api.tokens import model_credential, runner_credential
from corral.api.units import format_bytes, parse_quantity
from corral.api.v1alpha1 import AgentSession, AgentSessionSpec, CredentialsSpec, Pattern
from corral.config import OperatorConfig
from corral.render.cpu_boost import startup_cpu_limit
from corral.render.meta import RUNNER, Manifest, RenderError, object_meta, without_none
from corral.render.names import dns_label, short_hash
from corral.render.pvc import pvc_name

# Pod annotations the operator writes and reads back.
ATTEMPT_ANNOTATION = "corral.dev/attempt"
# Changes when a spec field that only a new pod can apply changes (see restart_hash).
RESTART_HASH_ANNOTATION = "corral.dev/restart-hash"

# Kubernetes caps the sum of a pod's annotations at 256 KiB; leave room for the others.
MAX_SPEC_ANNOTATION_BYTES = 200 * 1024

STATE_VOLUME = "state"
HOME_VOLUME = "home"
TMP_VOLUME = "tmp"
SPEC_VOLUME = "session-spec"

# How long the runner may take to become ready before the kubelet restarts its container
# (an Ephemeral runner's startup probe; the others' liveness probe's initial delay).
STARTUP_SECONDS = 120
STARTUP_PROBE_PERIOD_SECONDS = 1
# The postStart hook's bound on waiting for the runner to listen (it never fails a start).
LISTEN_WAIT_SECONDS = 10
# The readiness probe's period: at most this long from the runner's ready to the pod's Ready
# when the kubelet's early probe misses the start (see _readiness_probe).
READINESS_PERIOD_SECONDS = 2
# The runner stops taking work on SIGTERM and drains for this much less than the grace period.
DRAIN_MARGIN_SECONDS = 10


def pod_name(session: AgentSession, attempt: int) -> str:
    uid = session.metadata.uid or ""
    return dns_label(session.metadata.name, "-" + short_hash(uid, str(attempt)))


def spec_json(session: AgentSession, config: OperatorConfig) -> str:
    """The spec the runner reads (SPEC_FILE), with the operator's defaults filled in."""
    spec = session.spec
    # Not scheduling: the pod's placement is no business of the runner's (and a runner
    # image older than the field would refuse the file).
    update: dict[str, object] = {"model": spec.model or config.default_model, "scheduling": None}
    if config.model_proxy is not None:
        update["credentials"] = None  # not used by the pod: the gateway holds the key
    resolved = spec.model_copy(update=update)
    return resolved.model_dump_json(by_alias=True, exclude_none=True)


def restart_hash(
    spec: AgentSessionSpec, default_image: str | None = None, model_url: str | None = None
) -> str:
    """Hash of the spec fields a running pod cannot pick up; a change means a new pod.

    The image is the one the pod runs: spec.image, else the operator's default, so that a
    new default image (an upgrade) reaches every session that does not pin its own.
    The rest (model, prompts, limits, tools, MCP servers) reaches the runner live: the
    kubelet refreshes the projected spec file when the pod's annotation changes.
    """
    fields = {
        "image": spec.image or default_image,
        # Not startupBoost: it changes how a pod starts, not what it runs with.
        "resources": spec.resources.model_dump(exclude={"startup_boost"}),
        "credentials": spec.credentials.model_dump() if spec.credentials else None,
        "agents": sorted(agent.name for agent in spec.agents or []),
    }
    if model_url is not None:
        # Turning the model proxy on replaces every pod: none keeps a real key.
        fields["model_proxy"] = model_url
    placement = _session_placement(spec)
    if placement is not None:
        # Only when set: an upgrade to an operator that knows the field replaces no pod.
        fields["scheduling"] = placement
    return short_hash(json.dumps(fields, sort_keys=True), length=16)


def _session_placement(spec: AgentSessionSpec) -> dict[str, object] | None:
    """spec.scheduling as the restart hash sees it: order and empty-vs-absent ignored."""
    scheduling = spec.scheduling
    if scheduling is None or not (scheduling.node_selector or scheduling.tolerations):
        return None
    tolerations = sorted({t.identity() for t in scheduling.tolerations}, key=repr)
    return {"nodeSelector": scheduling.node_selector, "tolerations": tolerations}


def node_selector(spec: AgentSessionSpec, config: OperatorConfig) -> dict[str, str]:
    """The operator's nodeSelector with the session's added. On a key both set the
    operator's value wins: its selector is the platform's constraint (e.g. "session pods
    stay on the agent pool"), which a session may narrow but never lift."""
    own = spec.scheduling.node_selector if spec.scheduling else {}
    return {**own, **config.node_selector}


def overridden_selector_keys(spec: AgentSessionSpec, config: OperatorConfig) -> list[str]:
    """Keys of spec.scheduling.nodeSelector whose value the operator's replaces."""
    own = spec.scheduling.node_selector if spec.scheduling else {}
    return sorted(k for k, v in own.items() if config.node_selector.get(k, v) != v)


def tolerations(spec: AgentSessionSpec, config: OperatorConfig) -> list[Manifest]:
    """The operator's tolerations, then the session's, each once."""
    own = spec.scheduling.tolerations if spec.scheduling else []
    seen: set[tuple[str, str, str, str, int | None]] = set()
    found = []
    for toleration in [*config.tolerations, *own]:
        if toleration.identity() not in seen:
            seen.add(toleration.identity())
            found.append(toleration.model_dump(by_alias=True, exclude_none=True))
    return found


def grace_period_seconds(spec: AgentSessionSpec, config: OperatorConfig) -> int:
    if spec.pattern == Pattern.HYBRID:
        return config.hybrid_termination_grace_period_seconds
    return config.termination_grace_period_seconds


def runner_command(drain_seconds: int) -> list[str]:
    return [
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
        "--drain-seconds",
        str(drain_seconds),
    ]


def proxy_env(config: OperatorConfig) -> dict[str, str]:
    """Where the pod's HTTP clients send what leaves the cluster: the gateway's egress proxy
    (both spellings: curl reads only the lower-case http_proxy, others the upper case)."""
    proxy = config.proxied_egress
    if proxy is None:
        return {}
    no_proxy = ",".join(proxy.no_proxy)
    env = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = env[name.lower()] = proxy.url
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def canary_env(config: OperatorConfig) -> dict[str, str]:
    """Where the runner checks that the pod's NetworkPolicy is in force before it starts a
    CLI (corral.runner.egress_gate)."""
    canary = config.egress_canary
    if canary is None:
        return {}
    return {
        runtime.ENV_EGRESS_CANARY: canary.address,
        runtime.ENV_EGRESS_CANARY_MAX_WAIT: f"{canary.max_wait_seconds:g}",
        runtime.ENV_EGRESS_CANARY_TRY: f"{canary.try_seconds:g}",
    }


def _model_env(
    session: AgentSession, config: OperatorConfig
) -> tuple[str | None, str | None, CredentialsSpec | None]:
    """ANTHROPIC_BASE_URL, a plain ANTHROPIC_API_KEY, and the Secret to reference for it.

    With the gateway's model proxy the key is the session's own credential at the proxy,
    worthless anywhere else: no real key, key reference or key file reaches the pod."""
    if config.model_proxy is not None:
        meta = session.metadata
        key = config.activity_keys[0] if config.activity_keys else b""
        credential = model_credential(key, meta.namespace or "", meta.name, meta.uid or "")
        return config.model_proxy.url, credential, None
    credentials = session.spec.credentials or config.default_credentials
    base_url = (credentials.base_url if credentials else None) or config.default_anthropic_base_url
    return base_url, None, credentials


def _env(session: AgentSession, config: OperatorConfig, pod: str) -> list[Manifest]:
    base_url, proxy_key, credentials = _model_env(session, config)
    runner_env = dict(config.runner_env)
    if credentials or proxy_key:
        runner_env.pop(runtime.ENV_API_KEY, None)  # the session's own key wins
    plain = {
        runtime.ENV_DISABLE_TRAFFIC: "1",
        runtime.ENV_SESSION_NAME: session.metadata.name,
        runtime.ENV_SESSION_NAMESPACE: session.metadata.namespace,
        runtime.ENV_SESSION_FILE: runtime.SPEC_FILE,
        # runAsUser has no passwd entry in most images; the CLI needs a writable home.
        "HOME": runtime.HOME_DIR,
        **proxy_env(config),
        **canary_env(config),
        **runner_env,
    }
    if base_url:
        plain[runtime.ENV_BASE_URL] = base_url
    if proxy_key:
        plain[runtime.ENV_API_KEY] = proxy_key
    if config.activity_url:
        plain[runtime.ENV_ACTIVITY_URL] = config.activity_url
        if config.activity_keys:
            # Only this pod of this session can report as itself (see corral.api.activity).
            # A plain value: whoever may read this pod's spec already controls the session.
            meta = session.metadata
            plain[runtime.ENV_ACTIVITY_TOKEN] = activity_token(
                config.activity_keys[0], meta.namespace or "", meta.name, meta.uid or "", pod
            )
    if config.gateway is not None and config.activity_keys:
        # Worthless outside this session: the runner admits only the gateway (docs/gateway.md).
        meta = session.metadata
        plain[runtime.ENV_GATEWAY_CREDENTIAL] = runner_credential(
            config.activity_keys[0], meta.namespace or "", meta.name, meta.uid or ""
        )
    env: list[Manifest] = [{"name": name, "value": value} for name, value in plain.items()]
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    env.append({"name": runtime.ENV_POD_NAME, "valueFrom": pod_name})
    if credentials:
        # A reference, never a copy: the key stays in its Secret.
        key_ref = {"key": credentials.key, "name": credentials.secret_name, "optional": False}
        env.insert(0, {"name": runtime.ENV_API_KEY, "valueFrom": {"secretKeyRef": key_ref}})
    return env


def _resources(spec: AgentSessionSpec, config: OperatorConfig) -> Manifest:
    # requests == limits (Guaranteed QoS; the memory limit is the only cap the CLI has),
    # except a start-up CPU limit above the request (Burstable; see render.cpu_boost).
    amounts = {
        "cpu": spec.resources.cpu,
        "memory": spec.resources.memory,
        "ephemeral-storage": spec.resources.disk,
    }
    limits = dict(amounts)
    boost = startup_cpu_limit(spec, config)
    if boost is not None:
        limits["cpu"] = boost
    return {"limits": limits, "requests": dict(amounts)}


def _empty_dir(name: str, size_limit: str) -> Manifest:
    return {"emptyDir": {"sizeLimit": size_limit}, "name": name}


def _volumes(session: AgentSession) -> list[Manifest]:
    spec = session.spec
    disk = spec.resources.disk
    # Home and /tmp get a quarter each so that neither can starve the workspace; the pod's
    # ephemeral-storage limit still caps the sum.
    quarter = format_bytes(parse_quantity(disk) / 4)
    if spec.pattern == Pattern.HYBRID:
        claim = {"claimName": pvc_name(session)}
        state = {"name": STATE_VOLUME, "persistentVolumeClaim": claim}
    else:
        state = _empty_dir(STATE_VOLUME, disk)
    field_path = f"metadata.annotations['{runtime.SPEC_ANNOTATION}']"
    spec_file = {
        "fieldRef": {"fieldPath": field_path},
        "path": PurePosixPath(runtime.SPEC_FILE).name,
    }
    return [
        state,
        _empty_dir(HOME_VOLUME, quarter),
        _empty_dir(TMP_VOLUME, quarter),
        {"downwardAPI": {"defaultMode": 0o444, "items": [spec_file]}, "name": SPEC_VOLUME},
    ]


def _volume_mounts() -> list[Manifest]:
    if PurePosixPath(runtime.SPEC_FILE).parent != PurePosixPath(runtime.SPEC_DIR):
        raise RenderError("runtime.SPEC_FILE must live directly in runtime.SPEC_DIR")
    return [
        {"mountPath": runtime.STATE_DIR, "name": STATE_VOLUME},
        {"mountPath": runtime.HOME_DIR, "name": HOME_VOLUME},
        {"mountPath": runtime.TMP_DIR, "name": TMP_VOLUME},
        {"mountPath": runtime.SPEC_DIR, "name": SPEC_VOLUME, "readOnly": True},
    ]


def _http_probe(
    path: str, period: int, failures: int, timeout: int = 3, delay: int | None = None
) -> Manifest:
    return without_none(
        {
            "failureThreshold": failures,
            "httpGet": {"path": path, "port": runtime.RUNNER_PORT_NAME},
            "initialDelaySeconds": delay,
            "periodSeconds": period,
            "timeoutSeconds": timeout,
        }
    )


def _wait_for_listener() -> Manifest:
    # The kubelet probes readiness at the first sync that sees the container running, which
    # can come before the runner's process has bound its port (about 70 ms in): a refused
    # probe is an Unhealthy Warning. That sync waits for this hook, which returns once the
    # port listens (see corral.probe); one exec per start, as the startup probe it replaces.
    command = [
        "python",
        "-m",
        "corral.probe",
        f"--port={runtime.RUNNER_PORT}",
        "--listening",
        f"--within={LISTEN_WAIT_SECONDS}",
    ]
    return {"postStart": {"exec": {"command": command}}}


def _readiness_probe() -> Manifest:
    # No startup probe before it: the kubelet runs a startup probe only on its period's
    # ticks, but a readiness probe also at once when it sees the container running. The
    # runner listens from its first milliseconds and holds that probe's answer until its
    # agents are up (`?wait=`), so the pod turns Ready as the runner does. The timeout
    # covers the hold; a probe at rest is answered at once.
    # That early run is triggered by the kubelet's pod sync and can read the container's
    # status from before it ran, and then nothing probes until the period's next tick,
    # counted from the pod's admission (about 3 wakes in 15 on the real node: Ready 4 s
    # after the runner with a 5 s period). A 2 s period bounds that; 5 failures keep the
    # 10 s a runner may stop answering before its pod is taken out of its Service.
    hold = runtime.READY_HOLD_SECONDS
    path = f"{runtime.READINESS_PATH}?wait={hold}"
    return _http_probe(path, period=READINESS_PERIOD_SECONDS, failures=5, timeout=hold + 5)


def _startup_probe() -> Manifest:
    # `python -m corral.probe`, not the `corral` command: it imports nothing of the CLI
    # (a tenth of a CPU-second less while the runner starts beside it).
    command = [
        "python",
        "-m",
        "corral.probe",
        f"--port={runtime.RUNNER_PORT}",
        f"--ready={runtime.READINESS_PATH}",
        f"--live={runtime.LIVENESS_PATH}",
        f"--within={STARTUP_SECONDS}",
    ]
    return {
        "exec": {"command": command},
        # The kubelet runs a startup probe only on its period's ticks (no early run when
        # the container starts, unlike readiness), and the first tick comes before the
        # container runs: a long period delayed Ready by a whole period. One second; the
        # probe itself waits, so it runs once.
        "failureThreshold": 1,
        "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
        "timeoutSeconds": STARTUP_SECONDS + 5,
    }


def _seccomp() -> Manifest:
    return {"type": "RuntimeDefault"}


def _container_security() -> Manifest:
    # What Pod Security `restricted` asks for, plus a read-only root filesystem.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsGroup": runtime.RUNNER_GID,
        "runAsNonRoot": True,
        "runAsUser": runtime.RUNNER_UID,
        "seccompProfile": _seccomp(),
    }


def _pod_security() -> Manifest:
    return {
        "fsGroup": runtime.RUNNER_GID,
        # A big Hybrid volume is chowned once, not on every wake.
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsGroup": runtime.RUNNER_GID,
        "runAsNonRoot": True,
        "runAsUser": runtime.RUNNER_UID,
        "seccompProfile": _seccomp(),
    }


def _container(session: AgentSession, config: OperatorConfig, grace: int, pod: str) -> Manifest:
    # An Ephemeral runner exits when its run is done, and a probe that lands between its
    # port closing and the kubelet seeing the exit posts an Unhealthy Warning for a run
    # that went well. Its pod is Ready once the startup probe saw it ready (busy counts as
    # ready), and a wedged run ends at activeDeadlineSeconds: no liveness or readiness.
    # The others are probed for readiness from their start, and for liveness once they
    # have had STARTUP_SECONDS to come up.
    liveness: Manifest | None = None
    readiness: Manifest | None = None
    lifecycle: Manifest | None = None
    startup: Manifest | None = _startup_probe()
    if session.spec.pattern != Pattern.EPHEMERAL:
        liveness = _http_probe(
            runtime.LIVENESS_PATH, period=10, failures=3, timeout=5, delay=STARTUP_SECONDS
        )
        readiness = _readiness_probe()
        lifecycle = _wait_for_listener()
        startup = None
    port = {
        "containerPort": runtime.RUNNER_PORT,
        "name": runtime.RUNNER_PORT_NAME,
        "protocol": "TCP",
    }
    container = {
        # `args`, not `command`: the image's ENTRYPOINT (tini) stays PID 1, reaps what the
        # agent's tools leave behind and forwards SIGTERM to the runner.
        "args": runner_command(max(grace - DRAIN_MARGIN_SECONDS, 0)) + config.runner_extra_args,
        "env": _env(session, config, pod),
        "image": session.spec.image or config.default_image,
        "imagePullPolicy": config.image_pull_policy,
        "lifecycle": lifecycle,
        "livenessProbe": liveness,
        "name": runtime.CONTAINER_NAME,
        "ports": [port],
        "readinessProbe": readiness,
        "resources": _resources(session.spec, config),
        "securityContext": _container_security(),
        # An Ephemeral runner's startup probe waits in the container (corral.probe), so
        # that a normal start posts no Unhealthy Warning Events.
        "startupProbe": startup,
        "terminationMessagePath": runtime.TERMINATION_LOG,
        # A crash before the runner wrote its outcome still leaves the log tail in status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": _volume_mounts(),
    }
    return without_none(container)


def _annotations(session: AgentSession, config: OperatorConfig, attempt: int) -> dict[str, str]:
    body = spec_json(session, config)
    size = len(runtime.SPEC_ANNOTATION) + len(body.encode())
    if size > MAX_SPEC_ANNOTATION_BYTES:
        raise RenderError(
            f"spec of {session.metadata.name} is {size} bytes as JSON; at most "
            f"{MAX_SPEC_ANNOTATION_BYTES} fit in a pod annotation: shorten the prompts"
        )
    return {
        runtime.SPEC_ANNOTATION: body,
        ATTEMPT_ANNOTATION: str(attempt),
        RESTART_HASH_ANNOTATION: restart_hash(
            session.spec, config.default_image, config.model_proxy_url
        ),
    }


def render_pod(session: AgentSession, config: OperatorConfig, attempt: int) -> Manifest:
    """The pod of the session's `attempt`-th run (Ephemeral) or incarnation (the others)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    spec = session.spec
    ephemeral = spec.pattern == Pattern.EPHEMERAL
    grace = grace_period_seconds(spec, config)
    name = pod_name(session, attempt)
    pod_spec = {
        "activeDeadlineSeconds": (
            (spec.active_deadline_seconds or config.default_active_deadline_seconds)
            if ephemeral
            else None
        ),
        # The runner needs no Kubernetes credentials: the spec arrives as a file.
        "automountServiceAccountToken": False,
        "containers": [_container(session, config, grace, name)],
        "enableServiceLinks": False,
        "imagePullSecrets": [{"name": n} for n in config.image_pull_secrets] or None,
        "nodeSelector": node_selector(spec, config) or None,
        "priorityClassName": config.priority_class_name,
        "restartPolicy": "Never" if ephemeral else "Always",
        "runtimeClassName": config.runtime_class_name,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": grace,
        "tolerations": tolerations(spec, config) or None,
        "volumes": _volumes(session),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": object_meta(session, name, RUNNER, _annotations(session, config, attempt)),
        "spec": without_none(pod_spec),
    }
