"""The contract between the operator's rendered pod and the runner inside it.

Both sides import these names, so the image recipe, the pod template and the runner
cannot drift apart: paths, port, user and environment variables live here only.
"""

from __future__ import annotations

RUNNER_PORT = 8080
RUNNER_PORT_NAME = "http"
# Probed by the kubelet: liveness (the process answers) and readiness (it serves requests,
# busy or idle: a busy runner must stay reachable for interrupts).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
# The readiness probe asks the runner to hold its answer this long while its agents start
# (`/readyz?wait=`), so the first probe, at container start, sees it ready.
READY_HOLD_SECONDS = 20
RUNNER_UID = 1000
RUNNER_GID = 1000
CONTAINER_NAME = "runner"
# The largest request body or WebSocket message the runner takes (`--max-request-bytes`).
RUNNER_MAX_REQUEST_BYTES = 256 * 1024

# One volume holds everything a Hybrid session must keep: the agent's working directory
# and the CLI's config dir (transcripts). Resume needs the same absolute cwd, so the
# paths are fixed for every pattern.
STATE_DIR = "/session"
WORKSPACE_DIR = "/session/workspace"
CLAUDE_CONFIG_DIR = "/session/claude"
HOME_DIR = "/home/corral"
TMP_DIR = "/tmp"
# The spec reaches the pod through the downward API (a pod annotation projected as a file),
# so the pod needs no Kubernetes credentials to read it.
SPEC_DIR = "/etc/corral"
SPEC_FILE = "/etc/corral/session.json"
SPEC_ANNOTATION = "corral.dev/session-spec"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096

ENV_API_KEY = "ANTHROPIC_API_KEY"
ENV_BASE_URL = "ANTHROPIC_BASE_URL"
ENV_SESSION_NAME = "CORRAL_SESSION_NAME"
ENV_SESSION_NAMESPACE = "CORRAL_SESSION_NAMESPACE"
ENV_SESSION_FILE = "CORRAL_SESSION_FILE"
ENV_DISABLE_TRAFFIC = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"

# The images the release workflow publishes (.github/workflows/release.yaml); the chart's
# defaults. Their recipes are images/runner and images/operator.
DEFAULT_RUNNER_IMAGE = "corral.dev/runner:0.1.0"
DEFAULT_OPERATOR_IMAGE = "corral.dev/operator:0.1.0"
# The operator image's user (the chart's securityContext) and `corral operator --port`.
OPERATOR_UID = 65532
OPERATOR_GID = 65532
OPERATOR_PORT = 8081
# PID 1 of both images: reaps orphans, forwards signals. Pods set `args`, never `command`.
IMAGE_ENTRYPOINT = ("/usr/bin/tini", "--")
DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_IDLE_TIMEOUT = "15m"
DEFAULT_BACKGROUND_TASK_TIMEOUT = "1h"
# Far above what an agent starts; bounds what a runner (or a forged report) says.
MAX_BACKGROUND_TASKS = 10_000
# The same for scheduled wakeups (the CLI's session crons: ScheduleWakeup, CronCreate).
MAX_SCHEDULED_WAKEUPS = 1_000

WAKE_ANNOTATION = "corral.dev/wake"

# Where the runner pushes activity reports (corral.api.activity); set by the operator.
ENV_ACTIVITY_URL = "CORRAL_ACTIVITY_URL"
ENV_POD_NAME = "CORRAL_POD_NAME"
# The credential the gateway presents to this session's runner (corral.api.tokens);
# when set, the runner refuses every other caller from outside the pod.
ENV_GATEWAY_CREDENTIAL = "CORRAL_GATEWAY_CREDENTIAL"
GATEWAY_CREDENTIAL_HEADER = "X-Corral-Gateway-Credential"
# The pod's activity token (corral.api.activity): sent with each report.
ENV_ACTIVITY_TOKEN = "CORRAL_ACTIVITY_TOKEN"
# The egress gate's canary, host:port, and its timings (corral.runner.egress_gate).
ENV_EGRESS_CANARY = "CORRAL_EGRESS_CANARY"
ENV_EGRESS_CANARY_MAX_WAIT = "CORRAL_EGRESS_CANARY_MAX_WAIT_SECONDS"
ENV_EGRESS_CANARY_TRY = "CORRAL_EGRESS_CANARY_TRY_SECONDS"
