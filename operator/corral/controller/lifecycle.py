"""The lifecycle of a session as one pure function: what exists -> what to do.

`decide` reads a snapshot (the session, its pods and other children, the runner's last
activity report, the clock) and returns a `Plan`: children to create, pods to delete,
the full new status, Events, and when to look again. It does no I/O, so every
transition of the four patterns is unit-tested without a cluster, and the reconciler
that applies plans stays small. Level-based: running it twice on the same snapshot
gives the same plan, and a plan already applied yields an empty one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from corral.api import runtime
from corral.api.units import parse_duration
from corral.api.v1alpha1 import (
    AgentSession,
    AgentSessionStatus,
    AgentStatus,
    CostStatus,
    FinishedCleanup,
    Pattern,
    Phase,
    RunnerInfo,
)
from corral.config import OperatorConfig
from corral.controller import conditions as cond
from corral.controller import credentials
from corral.controller.credentials import Refusal, SecretCheck
from corral.controller.drift import repair_patch
from corral.controller.outcome import outcome_of, termination_detail
from corral.controller.pods import (
    CONFIG_FAILURES,
    IMAGE_PULL_FAILURES,
    PodView,
    ended_detail,
    held_by_volume,
    spec_digest,
)
from corral.render import (
    Manifest,
    endpoint_url,
    network_policy_name,
    pvc_name,
    render_network_policy,
    render_pod,
    render_pvc,
    render_service,
    restart_hash,
    service_name,
    spec_json,
)
from corral.render.cpu_boost import needs_settling, resize_patch, settled_cpu_limit
from corral.render.pod import (
    MAX_SPEC_ANNOTATION_BYTES,
    STARTUP_SECONDS,
    overridden_selector_keys,
)
from corral.render.pvc import storage_too_large

# How often to look again at a session waiting for something outside our watches (a
# credentials Secret that is missing or unlabelled): at first quickly, then less often.
CREDENTIALS_RETRY_SECONDS = 5.0
CREDENTIALS_RETRY_MAX_SECONDS = 60.0
# status.observedWake keeps a corral.dev/wake value up to this length, else its hash: an
# annotation may be 256 KiB, the status field (and nothing from metadata) may not.
MAX_OBSERVED_WAKE = 128
WAKE_HASH_PREFIX = "sha256:"
BUSY_REPORT_STALE = timedelta(seconds=120)
# A busy runner reports every 30 s (corral.runner.activity.HEARTBEAT_SECONDS), to the leader
# only: a replica that just became leader waits this long before scaling a session down
# whose runner it has not heard from since, as it may be in a long silent tool call.
# (OperatorConfig.failover_grace_seconds, whose default this is.)
HEARTBEAT_GRACE = timedelta(seconds=45)
# How often to look again at a child name taken by an object that is not the session's.
NAME_TAKEN_RETRY_SECONDS = 30.0
# A runner not ready after this many restarts of its container is crash-looping.
CRASH_LOOP_RESTARTS = 3
# The start-up CPU boost outlasts the pod's Ready (which comes as the runner turns ready)
# by this much, measured from the Ready condition's whole-second time: a woken runner's
# first answer starts at once and runs boosted.
BOOST_AFTER_READY_SECONDS = 2.0


def work_under_way(tasks: int, wakeups: int) -> str:
    """What keeps a Hybrid session awake past idleTimeout, as its runner reported it."""
    parts = [f"background tasks running: {tasks}"] if tasks else []
    if wakeups:
        parts.append(f"wakeups scheduled: {wakeups}")
    return ", ".join(parts)


# After the minute, the pod stays up at least this long: the CLI fires the task and its
# turn (activity) starts the idle countdown again.
DURABLE_WAKE_GRACE = timedelta(seconds=30)
# A reported time further ahead is not believed (a yearly cron is within it).
DURABLE_WAKE_HORIZON = timedelta(days=367)


def durable_wakeup_text(when: datetime | None, now: datetime) -> str | None:
    """What status keeps of the runner's next durable wakeup: a time not yet past its
    grace and within the horizon (the runner's word, bounded), else nothing."""
    if when is None or not now - DURABLE_WAKE_GRACE < when <= now + DURABLE_WAKE_HORIZON:
        return None
    return timestamp(when)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wake_token(value: str) -> str:
    """What status.observedWake records of a wake value: the value itself when short, else
    (and for anything that looks like a hash) a hash, so a long value cannot wedge status."""
    if len(value) <= MAX_OBSERVED_WAKE and not value.startswith(WAKE_HASH_PREFIX):
        return value
    return WAKE_HASH_PREFIX + hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Timeout:
    """A Hybrid timeout as in effect: the spec's, else the operator's default; `text` as
    written (for messages). Both are validated before they get here (the spec by its
    model, the default by the operator's config), so parsing cannot fail."""

    text: str
    duration: timedelta

    @classmethod
    def of(cls, value: str | None, default: str) -> Timeout:
        text = value or default
        return cls(text, parse_duration(text))


@dataclass(frozen=True)
class Activity:
    """The runner's latest report (it pushes them; see corral.api.activity). Both times are
    the operator's clock when the report arrived: a report says busy or idle, never when."""

    last_activity: datetime
    busy: bool
    session_id: str | None = None
    num_turns: int | None = None
    total_cost_usd: float | None = None
    sdk_version: str | None = None
    cli_version: str | None = None
    agents: tuple[AgentStatus, ...] = ()
    # The pod whose runner sent the report. Fix: "busy" describes that runner only; a
    # report kept from a pod that is gone must not keep its successor awake forever.
    pod_name: str | None = None
    # When the operator received it. A busy runner reports every 30 s; a "busy" older than
    # BUSY_REPORT_STALE (a runner that died or lost its network mid-turn) no longer counts.
    received_at: datetime | None = None
    # Background tasks the agents started that still run, and wakeups they scheduled in
    # their CLIs that have not fired (a Hybrid session then sleeps after
    # spec.backgroundTaskTimeout rather than idleTimeout).
    background_tasks: int = 0
    scheduled_wakeups: int = 0
    # When the agents' durable tasks fire next (a sleeping Hybrid session is woken ahead).
    next_durable_wakeup: datetime | None = None


@dataclass(frozen=True)
class Observed:
    session: AgentSession
    pods: list[PodView]
    has_service: bool
    has_network_policy: bool
    has_pvc: bool
    now: datetime
    activity: Activity | None = None
    # Kind -> the owned fields of the live Service / NetworkPolicy spec (controller.drift).
    live_specs: dict[str, str] = field(default_factory=dict)
    # Why child names are unusable: objects of those names exist and are not ours.
    name_conflicts: tuple[str, ...] = ()
    # The credentials Secret's metadata, judged; None: not looked up yet. The reconciler
    # looks only when the plan asks for it (Plan.check_credentials).
    secret_check: SecretCheck | None = None
    # When this replica became leader (runners report to the leader only); None: no guard.
    leading_since: datetime | None = None
    # The node the session's volume was made on (its claim's selected-node annotation).
    volume_node: str | None = None
    # A pod the status names that the store lacks, looked up on the API server and not
    # found there (Plan.confirm_gone): only then is it replaced.
    pod_gone: str | None = None


@dataclass(frozen=True)
class EventNote:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PodDeletion:
    name: str
    uid: str
    reason: str


@dataclass
class Plan:
    create: list[Manifest] = field(default_factory=list)
    delete_pods: list[PodDeletion] = field(default_factory=list)
    patch_pods: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Pods whose start-up CPU boost ends now: (name, patch of the `resize` subresource).
    resize_pods: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    patch_children: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    delete_children: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status_patch: dict[str, Any] | None = None
    events: list[EventNote] = field(default_factory=list)
    requeue_after: float | None = None
    delete_session: bool = False
    check_credentials: str | None = None  # Secret name to look up before deciding again
    confirm_gone: str | None = None  # pod name to look up before replacing it
    scaled_down: bool = False
    woke: bool = False
    # The status change only says "starting": the reconciler may hold it back briefly so
    # that a pod that is Running soon after costs one status write, not two.
    status_deferrable: bool = False

    @property
    def only_status(self) -> bool:
        """It writes the status (and Events) and changes nothing else: decided again on the
        status it wrote, with the same children, the decision asks for nothing more (every
        such plan of tests/unit/test_lifecycle.py's worlds is checked to be so)."""
        return self.status_patch is not None and not self._beyond_status

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )

    @property
    def empty(self) -> bool:
        return not (self.status_patch or self.events or self._beyond_status)

    @property
    def _beyond_status(self) -> bool:
        """A write or lookup other than the status and Events."""
        return bool(
            self.create
            or self.delete_pods
            or self.patch_pods
            or self.resize_pods
            or self.patch_children
            or self.delete_children
            or self.delete_session
            or self.check_credentials
            or self.confirm_gone
        )


def _status_patch(old: AgentSessionStatus, new: AgentSessionStatus) -> dict[str, Any] | None:
    """A merge patch turning `old` into `new`: changed keys, and nulls for removed ones."""
    before = old.model_dump(by_alias=True, exclude_none=True, mode="json")
    after = new.model_dump(by_alias=True, exclude_none=True, mode="json")
    if before == after:
        return None
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


class _Decision:
    """One run of `decide`: the snapshot, the status being built and the plan."""

    def __init__(self, observed: Observed, config: OperatorConfig) -> None:
        self.obs = observed
        self.config = config
        self.session = observed.session
        self.spec = observed.session.spec
        self.old = observed.session.status
        # A shallow copy: decisions replace status fields (conditions, cost, agents: new
        # objects), never change one in place, so the session's own status stays as read.
        # tests/unit/test_lifecycle.py checks that decide leaves its input unchanged.
        self.status = observed.session.status.model_copy()
        self.plan = Plan()
        self.now = observed.now
        self.now_text = timestamp(observed.now)
        self.generation = observed.session.metadata.generation
        own_uid = observed.session.metadata.uid
        # Only pods this very session owns (not an older session of the same name).
        self.pods = [p for p in observed.pods if p.owner_uid in (None, own_uid)]
        self.live = sorted((p for p in self.pods if not p.deleting), key=lambda p: p.attempt)
        self.spec_ok = True

    # --- helpers -------------------------------------------------------------------------

    @cached_property
    def spec_text(self) -> str:
        """The spec as the pod annotation carries it (rendered once per decision)."""
        return spec_json(self.session, self.config)

    def condition(self, type_: str, status: bool | None, reason: str, message: str) -> None:
        self.status.conditions = cond.set_condition(
            self.status.conditions, type_, status, reason, message, self.generation, self.now_text
        )

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.plan.events.append(EventNote("Warning" if warning else "Normal", reason, message))

    def next_attempt(self) -> int:
        seen = [p.attempt for p in self.pods] + [self.old.attempts or 0]
        return max(seen) + 1

    def lost_pod_confirmed(self) -> bool:
        """Whether the pod the status names, which the store lacks, is gone for sure. The
        store can lag behind the cluster (a watch that is down or relisting after an API
        server outage, a created pod's expectation expired before its watch event came):
        replacing the pod on the store's word alone made a second pod beside the first.
        So the reconciler looks the pod up once (Plan.confirm_gone) and decides again."""
        name = self.old.pod_name
        if name is None or self.obs.pod_gone == name:
            return True
        self.plan.confirm_gone = name
        return False

    def delete_pod(self, pod: PodView, reason: str) -> None:
        self.plan.delete_pods.append(PodDeletion(pod.name, pod.uid, reason))

    def credentials_ready(self) -> bool:
        """Whether the next pod may start; False (with CredentialsReady=False, an Event and a
        Pending phase) while it may not get an API key (see corral.controller.credentials)."""
        refused = credentials.refusal(self.session, self.config)
        if refused is None:
            spec = credentials.credentials_of(self.session, self.config)
            if spec is None:
                source = credentials.operator_key_source(self.config) or "the operator"
                self.condition(cond.CREDENTIALS, True, "OperatorProvided", source)
                return True
            check = self.obs.secret_check
            if check is None:
                self.plan.check_credentials = spec.secret_name
                return False
            if check == SecretCheck.FOUND:
                message = f"Secret {spec.secret_name!r} found"
                self.condition(cond.CREDENTIALS, True, "SecretFound", message)
                return True
            namespace = self.session.metadata.namespace or ""
            refused = credentials.secret_refusal(check, namespace, spec)
            # Secrets are not watched: look again, less often the longer it lasts.
            self.plan.requeue(self.credentials_retry())
        self.refuse_credentials(refused)
        return False

    def credentials_retry(self) -> float:
        previous = cond.get_condition(self.old.conditions, cond.CREDENTIALS)
        since = parse_time(previous.last_transition_time) if previous else None
        if previous is None or previous.status != "False" or since is None:
            return CREDENTIALS_RETRY_SECONDS
        waited = (self.now - since).total_seconds()
        return min(max(CREDENTIALS_RETRY_SECONDS, waited / 2), CREDENTIALS_RETRY_MAX_SECONDS)

    def refuse_credentials(self, refused: Refusal) -> None:
        previous = cond.get_condition(self.old.conditions, cond.CREDENTIALS)
        if previous is None or previous.status != "False" or previous.reason != refused.reason:
            self.event(refused.reason, refused.message, warning=True)
        self.condition(cond.CREDENTIALS, False, refused.reason, refused.message)
        self.condition(cond.READY, False, refused.reason, refused.message)
        self.status.phase = Phase.PENDING
        if not self.live:
            # No pod: the next reconcile must not count the last one as lost again.
            self.status.pod_name = None
            self.status.start_time = None

    def note_credentials(self) -> None:
        """CredentialsReady for a pod that already exists (its key was checked at creation)."""
        spec = credentials.credentials_of(self.session, self.config)
        if spec is not None:
            message = f"Secret {spec.secret_name!r} found"
            self.condition(cond.CREDENTIALS, True, "SecretFound", message)
            return
        source = credentials.operator_key_source(self.config)
        if source is not None:
            self.condition(cond.CREDENTIALS, True, "OperatorProvided", source)
            return
        refused = credentials.refusal(self.session, self.config)
        if refused is not None and refused.reason == "NoCredentials":
            self.refuse_credentials(refused)

    def keep_phase_honest(self) -> None:
        """A pod without any API key (made before keys were required) is not Running."""
        no_key = cond.get_condition(self.status.conditions, cond.CREDENTIALS)
        if no_key is None or no_key.reason != "NoCredentials":
            return
        if self.status.phase == Phase.RUNNING:
            self.status.phase = Phase.PENDING
        if self.status.phase == Phase.PENDING:
            self.condition(cond.READY, False, "NoCredentials", no_key.message)

    def spec_fits(self) -> bool:
        """False (a condition, and one Warning Event per spec generation) while the spec is
        too large for the pod annotation that carries it. Nothing is retried: a spec change
        (a new generation) brings the session back."""
        size = len(runtime.SPEC_ANNOTATION) + len(self.spec_text.encode())
        if size <= MAX_SPEC_ANNOTATION_BYTES:
            self.status.conditions = cond.remove_condition(
                self.status.conditions, cond.SPEC_ACCEPTED
            )
            return True
        message = (
            f"the spec is {size} bytes as JSON; at most {MAX_SPEC_ANNOTATION_BYTES} fit in "
            "the pod annotation that carries it: shorten spec.prompt, spec.systemPrompt or "
            "the agents' prompts"
        )
        previous = cond.get_condition(self.old.conditions, cond.SPEC_ACCEPTED)
        if (
            previous is None
            or previous.status != "False"
            or previous.observed_generation != self.generation
        ):
            self.event("SpecTooLarge", message, warning=True)
        self.condition(cond.SPEC_ACCEPTED, False, "SpecTooLarge", message)
        return False

    def create_pod(self, reason: str) -> bool:
        """Create the next pod if the spec and credentials allow; False when it cannot."""
        if not self.spec_ok:
            self.status.phase = Phase.PENDING
            self.status.pod_name = None
            refused = "the spec is too large for a pod (see the SpecAccepted condition)"
            self.condition(cond.POD_READY, False, "SpecTooLarge", refused)
            self.condition(cond.READY, False, "SpecTooLarge", refused)
            return False
        if not self.credentials_ready():
            return False
        attempt = self.next_attempt()
        manifest = render_pod(self.session, self.config, attempt)
        self.plan.create.append(manifest)
        overridden = overridden_selector_keys(self.spec, self.config)
        if overridden:
            # Once per pod, not per reconcile: the pod runs where the platform says.
            self.event(
                "NodeSelectorOverridden",
                f"spec.scheduling.nodeSelector {', '.join(overridden)}: the operator's "
                "nodeSelector sets the same key(s) and its value is used",
                warning=True,
            )
        self.status.attempts = attempt
        self.status.pod_name = manifest["metadata"]["name"]
        self.status.start_time = None
        self.status.phase = Phase.PENDING
        if self.spec.pattern == Pattern.HYBRID:
            # The idle countdown starts with the pod, even before the runner reports.
            self.status.last_activity_time = self.now_text
        self.condition(cond.POD_READY, False, "PodCreated", f"pod {self.status.pod_name} created")
        self.condition(cond.READY, False, "Starting", f"waiting for pod {self.status.pod_name}")
        if attempt > 1 or reason != "PodCreated":
            # The first pod of a session is its normal start, visible in status; an Event
            # would be one more API write per session for nothing new.
            self.event(reason, f"created pod {self.status.pod_name}")
        return True

    @property
    def spec_changed(self) -> bool:
        """The spec changed since the last reconcile that wrote status (not the first)."""
        seen = self.old.observed_generation
        return seen is not None and seen != self.generation

    def ensure_children(self) -> None:
        """Create missing children; put back what changed in the Service and the policy
        (spec.network or the operator's config changed, or someone edited them by hand)."""
        service = render_service(self.session)
        policy = render_network_policy(self.session, self.config)
        wanted = ((service, self.obs.has_service), (policy, self.obs.has_network_policy))
        for child, exists in wanted:
            kind = child["kind"]
            if not exists:
                self.plan.create.append(child)
                continue
            patch = repair_patch(kind, self.obs.live_specs.get(kind), child)
            if patch is not None:
                name = child["metadata"]["name"]
                self.plan.patch_children.append((kind, name, patch))
                if self.spec_changed:
                    self.event(f"{kind}Updated", f"{kind} {name} follows the session's new spec")
                else:  # a hand edit, or the operator's own settings changed
                    message = f"{kind} {name} differed from the session's spec; restored"
                    self.event(f"{kind}Restored", message)
        if self.spec.pattern == Pattern.HYBRID:
            if not self.obs.has_pvc and storage_too_large(self.session, self.config) is None:
                self.plan.create.append(render_pvc(self.session, self.config))
            self.status.pvc_name = pvc_name(self.session)
        self.status.service_name = service_name(self.session)
        self.status.endpoint = endpoint_url(self.session)

    def children_blocked(self) -> bool:
        """True (with a condition, a Warning Event and no pod) while the session cannot have
        children of its own: a name taken by an object that is not ours, or a volume larger
        than the operator allows. A pod would run without its own policy, or mount someone
        else's volume; live pods are stopped."""
        problems = list(self.obs.name_conflicts)
        reason = "NameTaken"
        if not problems and self.spec.pattern == Pattern.HYBRID and not self.obs.has_pvc:
            too_large = storage_too_large(self.session, self.config)
            if too_large is not None:
                problems, reason = [too_large], "StorageTooLarge"
        if not problems:
            self.status.conditions = cond.remove_condition(self.status.conditions, cond.CHILDREN)
            return False
        message = "; ".join(problems)
        previous = cond.get_condition(self.old.conditions, cond.CHILDREN)
        if previous is None or previous.reason != reason or previous.message != message:
            self.event(reason, message, warning=True)
        self.condition(cond.CHILDREN, False, reason, message)
        self.condition(cond.READY, False, reason, message)
        for pod in self.live:
            self.add_pod_seconds(pod.started_at)
            self.delete_pod(pod, reason)
        if self.live or self.old.phase in (None, Phase.PENDING, Phase.RUNNING):
            self.status.phase = Phase.PENDING
        self.status.pod_name = None
        self.status.start_time = None
        if reason == "NameTaken":
            self.plan.requeue(NAME_TAKEN_RETRY_SECONDS)
        return True

    def ttl_due(self) -> bool | None:
        """Whether a finished Ephemeral session's TTL has passed (None: it has none)."""
        if self.old.phase not in (Phase.SUCCEEDED, Phase.FAILED):
            return None
        ttl = self.spec.ttl_seconds_after_finished
        finished = parse_time(self.old.completion_time)
        if ttl is None or finished is None:
            return None
        due = finished + timedelta(seconds=ttl)
        if self.now < due:
            self.plan.requeue((due - self.now).total_seconds())
            return False
        return True

    def children_expired(self) -> bool:
        """A finished session whose TTL deletes only its children, and is past it."""
        return (
            self.spec.pattern == Pattern.EPHEMERAL
            and self.spec.cleanup_after_finished == FinishedCleanup.CHILDREN
            and self.ttl_due() is True
        )

    def delete_children(self) -> None:
        """The GitOps-safe end of a TTL: the session and its status stay (a GitOps tool
        would re-create a deleted session, and the prompt would run again)."""
        gone = []
        if self.obs.has_service:
            self.plan.delete_children.append(("Service", service_name(self.session)))
            gone.append("Service")
        if self.obs.has_network_policy:
            name = network_policy_name(self.session)
            self.plan.delete_children.append(("NetworkPolicy", name))
            gone.append("NetworkPolicy")
        self.status.service_name = None
        self.status.endpoint = None
        if gone:
            self.event(
                "ChildrenDeleted",
                f"ttlSecondsAfterFinished passed: deleted the {' and '.join(gone)}; the "
                "session is kept (cleanupAfterFinished: Children)",
            )

    def drop_duplicates(self) -> PodView | None:
        """Keep the newest live pod; a second one (never expected) is deleted."""
        if not self.live:
            return None
        for extra in self.live[:-1]:
            self.delete_pod(extra, "Duplicate")
            self.event("DuplicatePodDeleted", f"deleted extra pod {extra.name}", warning=True)
        return self.live[-1]

    def settle_cpu(self, pod: PodView) -> None:
        """End a pod's start-up CPU boost once it has been Ready for
        BOOST_AFTER_READY_SECONDS. Not at the runner's first activity report, nor at Ready
        itself, which come as the runner turns ready: a woken runner's first answer (a
        message the gateway held) then ran at the session's limit, about 0.3 s slower at
        250m (see docs/startup-benchmarks.md). Level-based: a pod still above its settled
        limit (after an operator restart, say) is resized whenever it is seen Ready long
        enough. Not on a node that cannot resize: the pod keeps its boost, and no request
        is sent to be refused."""
        if not (pod.ready and pod.resizable and needs_settling(pod.cpu_limit, self.spec)):
            return
        ready_since = parse_time(pod.ready_since)
        if ready_since is not None:
            # Whole seconds, rounded down: the boost outlasts Ready by 1 to 2 s.
            due = ready_since + timedelta(seconds=BOOST_AFTER_READY_SECONDS)
            if self.now < due:
                self.plan.requeue((due - self.now).total_seconds())
                return
        patch = resize_patch(runtime.CONTAINER_NAME, settled_cpu_limit(self.spec))
        self.plan.resize_pods.append((pod.name, patch))

    def observe_running_pod(self, pod: PodView) -> None:
        """Phase and conditions from a pod that is not finished."""
        self.settle_cpu(pod)
        self.status.pod_name = pod.name
        self.status.attempts = max(self.status.attempts or 0, pod.attempt)
        known = cond.get_condition(self.status.conditions, cond.CREDENTIALS)
        if known is None or known.reason == "NoCredentials":
            # The pod was made after its key was checked; that status write may have been
            # held back (see Plan.status_deferrable), so say it again here.
            self.note_credentials()
        self.status.start_time = self.status.start_time or pod.started_at
        if pod.ready:
            self.status.phase = Phase.RUNNING
            self.condition(cond.POD_READY, True, "PodReady", f"pod {pod.name} is ready")
            self.condition(cond.READY, True, "Running", "the runner accepts messages")
            return
        self.status.phase = Phase.PENDING
        if pod.restart_count >= CRASH_LOOP_RESTARTS and pod.terminated is not None:
            self.status.phase = Phase.CRASH_LOOPING
            detail = termination_detail(pod.terminated, self.spec.resources.memory)
            reason = "CrashLooping"
            message = f"the runner restarted {pod.restart_count} times; last exit: {detail}"
            warn = True
        elif pod.unschedulable:
            reason, message, warn = "Unschedulable", pod.unschedulable, True
            held = held_by_volume(pod.unschedulable, self.status.pvc_name, self.obs.volume_node)
            if held is not None:
                reason, message = "VolumeNodeUnavailable", held
        elif pod.waiting_reason in IMAGE_PULL_FAILURES:
            reason = "ImagePullFailed"
            message = (
                f"{pod.waiting_reason}: {pod.waiting_message or 'cannot pull the runner image'}"
            )
            warn = True
        elif pod.waiting_reason in CONFIG_FAILURES:
            reason, message, warn = "ContainerConfigError", pod.waiting_message or "", True
        elif pod.phase == "Running" and self.was_ready(pod):
            reason, message, warn = (
                "RunnerNotReady",
                f"pod {pod.name} was ready and is not now: its runner stopped answering the "
                "readiness probe, or its node stopped reporting to the control plane",
                True,
            )
        elif pod.phase == "Running":
            reason, message, warn = (
                "RunnerStarting",
                "waiting for the runner's readiness probe",
                False,
            )
        else:
            reason, message, warn = "PodPending", f"pod {pod.name} is {pod.phase}", False
        previous = cond.get_condition(self.old.conditions, cond.POD_READY)
        if warn and (previous is None or previous.reason != reason):
            self.event(reason, message, warning=True)
        self.condition(cond.POD_READY, False, reason, message)
        self.condition(cond.READY, False, reason, message)

    def was_ready(self, pod: PodView) -> bool:
        """Whether this pod had been ready and its runner neither ended nor restarted (one
        that stopped answering, or a node gone silent, rather than a runner starting again
        or an Ephemeral run ending, whose pod is Running and not ready until the kubelet
        reports the exit): status said so of this very pod."""
        if self.spec.pattern == Pattern.EPHEMERAL or pod.deleting:
            return False
        if pod.restart_count or pod.terminated is not None:
            return False
        previous = cond.get_condition(self.old.conditions, cond.POD_READY)
        if previous is None or self.old.pod_name != pod.name:
            return False
        return previous.status == "True" or previous.reason == "RunnerNotReady"

    def apply_activity(self, coalesce: timedelta) -> None:
        """Copy the runner's report into status, writing last activity only when it moved
        by more than `coalesce` (every write costs an API call)."""
        activity = self.obs.activity
        if activity is None:
            return
        recorded = parse_time(self.old.last_activity_time)
        if recorded is None or recorded > self.now or activity.last_activity - recorded >= coalesce:
            self.status.last_activity_time = timestamp(activity.last_activity)
        if activity.session_id:
            self.status.session_id = activity.session_id
        if activity.num_turns is not None:
            self.status.num_turns = activity.num_turns
        if activity.total_cost_usd is not None:
            self.status.total_cost_usd = round(activity.total_cost_usd, 6)
        if activity.sdk_version or activity.cli_version:
            self.status.runner = RunnerInfo(
                sdk_version=activity.sdk_version, cli_version=activity.cli_version
            )
        if activity.agents:
            self.status.agents = list(activity.agents)
        if activity.pod_name in (None, self.status.pod_name):
            self.status.background_tasks = activity.background_tasks or None
            self.status.scheduled_wakeups = activity.scheduled_wakeups or None
            self.status.next_durable_wakeup_time = durable_wakeup_text(
                activity.next_durable_wakeup, self.now
            )

    def account_cost(self) -> None:
        tokens = self.status.total_cost_usd or (
            self.status.result.total_cost_usd if self.status.result else 0.0
        )
        cost = self.status.cost or CostStatus()
        price = self.config.price_per_container_hour_usd
        self.status.cost = CostStatus(
            tokens_usd=round(tokens or 0.0, 6),
            pod_seconds=cost.pod_seconds,
            infrastructure_usd=round(cost.pod_seconds * price / 3600, 6),
        )

    def add_pod_seconds(self, pod_started: str | None) -> None:
        """When a pod ends, its runtime joins the session's pod-seconds."""
        started = parse_time(pod_started)
        if started is None:
            return
        cost = self.status.cost or CostStatus()
        seconds = max(0, int((self.now - started).total_seconds()))
        self.status.cost = cost.model_copy(update={"pod_seconds": cost.pod_seconds + seconds})

    def suspend(self) -> None:
        for pod in self.live:
            self.add_pod_seconds(pod.started_at)
            self.delete_pod(pod, "Suspended")
        if self.old.phase != Phase.SUSPENDED:
            self.event("Suspended", "spec.suspend is true: the pod is stopped")
        self.status.phase = Phase.SUSPENDED
        self.status.pod_name = None
        self.status.start_time = None
        self.condition(cond.POD_READY, False, "Suspended", "spec.suspend is true")
        self.condition(cond.READY, False, "Suspended", "spec.suspend is true")

    def sync_live_spec(self, pod: PodView) -> bool:
        """Spec changes a running pod can take arrive through its annotation; others need a
        new pod. Returns False when the pod is being replaced."""
        if not self.spec_ok:
            return True  # a spec no pod can carry: the pod keeps the one it has
        if pod.restart_hash is not None and pod.restart_hash != restart_hash(
            self.spec, self.config.default_image, self.config.model_proxy_url
        ):
            self.add_pod_seconds(pod.started_at)
            self.delete_pod(pod, "SpecChanged")
            self.event("SpecChanged", f"pod {pod.name} replaced to apply the new spec")
            self.create_pod("PodReplaced")
            return False
        wanted = self.spec_text
        if pod.spec_digest is not None and pod.spec_digest != spec_digest(wanted):
            patch = {"metadata": {"annotations": {runtime.SPEC_ANNOTATION: wanted}}}
            self.plan.patch_pods.append((pod.name, patch))
        return True

    # --- patterns ------------------------------------------------------------------------

    def ephemeral(self) -> None:
        if self.old.phase in (Phase.SUCCEEDED, Phase.FAILED):
            for leftover in self.live:
                self.delete_pod(leftover, "Finished")
            if self.ttl_due():
                if self.spec.cleanup_after_finished == FinishedCleanup.CHILDREN:
                    self.delete_children()
                else:
                    self.plan.delete_session = True
            return
        pod = self.drop_duplicates()
        if pod is not None and pod.finished:
            self.finish_ephemeral(pod)
            return
        if pod is not None and pod.waiting_reason in IMAGE_PULL_FAILURES and pod.phase == "Pending":
            # A one-shot task cannot wait forever for an image; a retry may pull it.
            message = f"{pod.waiting_reason}: {pod.waiting_message or 'cannot pull the image'}"
            self.fail_attempt(pod, "ImagePullFailed", message)
            return
        if pod is not None:
            self.observe_running_pod(pod)
            return
        lost = self.old.pod_name is not None and self.old.phase in (Phase.PENDING, Phase.RUNNING)
        if lost and (self.old.attempts or 0) > 0 and not self.pods:
            if not self.lost_pod_confirmed():
                return
            self.fail_attempt(
                None, "PodLost", f"pod {self.old.pod_name} disappeared before it finished"
            )
            return
        if self.pods:
            return  # the previous attempt is still terminating; wait for it
        self.create_pod("PodCreated")

    def finish_ephemeral(self, pod: PodView) -> None:
        outcome = outcome_of(pod, self.spec.resources.memory)
        self.add_pod_seconds(pod.started_at)
        if outcome.result is not None:
            self.status.result = outcome.result
            self.status.session_id = outcome.result.session_id
            self.status.num_turns = outcome.result.num_turns
            self.status.total_cost_usd = outcome.result.total_cost_usd
        if outcome.succeeded:
            self.delete_pod(pod, "Finished")
            self.status.phase = Phase.SUCCEEDED
            self.status.completion_time = self.now_text
            self.status.pod_name = None
            self.condition(cond.COMPLETE, True, "Succeeded", outcome.message)
            self.condition(cond.READY, False, "Completed", "the run is over")
            self.condition(cond.POD_READY, False, "Completed", f"pod {pod.name} finished")
            turns = outcome.result.num_turns if outcome.result else 0
            self.event("Succeeded", f"the run finished in {turns} turns")
            self.schedule_ttl()
            return
        self.fail_attempt(pod, outcome.reason, outcome.message)

    def fail_attempt(self, pod: PodView | None, reason: str, message: str) -> None:
        if pod is not None:
            self.delete_pod(pod, reason)
        self.status.pod_name = None
        attempts = self.old.attempts or 0
        if attempts <= self.spec.retries:
            self.event(
                "Retrying",
                f"attempt {attempts} failed ({reason}: {message}); retrying",
                warning=True,
            )
            self.status.phase = Phase.PENDING
            if pod is None:
                self.create_pod("PodCreated")
            # else: the next reconcile, once this pod is gone, creates the next attempt.
            self.condition(cond.READY, False, reason, message)
            return
        self.status.phase = Phase.FAILED
        self.status.completion_time = self.now_text
        self.status.pod_name = None
        self.condition(cond.FAILED, True, reason, message)
        self.condition(cond.READY, False, reason, message)
        self.condition(cond.POD_READY, False, reason, message)
        self.event(reason, message, warning=True)
        self.schedule_ttl()

    def schedule_ttl(self) -> None:
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None:
            self.plan.requeue(float(ttl))

    def long_running(self) -> None:
        if self.spec.suspend:
            self.suspend()
            return
        pod = self.drop_duplicates()
        if pod is not None and pod.finished:
            self.replace_finished_pod(pod)
            return
        if pod is not None:
            if self.sync_live_spec(pod):
                self.observe_running_pod(pod)
            return
        if self.pods:
            return  # wait for the terminating predecessor before making its successor
        resuming = self.old.phase == Phase.SUSPENDED
        if self.old.pod_name is not None and not resuming:
            if not self.lost_pod_confirmed():
                return
            self.status.restarts = (self.old.restarts or 0) + 1
            self.event("PodLost", f"pod {self.old.pod_name} is gone; recreating it", warning=True)
        self.create_pod("PodResumed" if resuming else "PodCreated")

    def replace_finished_pod(self, pod: PodView) -> None:
        """A pod that ended (evicted, failed) is replaced; its restart is counted."""
        self.add_pod_seconds(pod.started_at)
        self.delete_pod(pod, pod.reason or "PodFinished")
        self.status.restarts = (self.old.restarts or 0) + 1
        self.event(
            "PodLost", f"pod {pod.name} ended ({ended_detail(pod)}); replacing it", warning=True
        )
        self.create_pod("PodRecreated")

    def hybrid(self) -> None:
        idle = Timeout.of(self.spec.idle_timeout, self.config.default_idle_timeout)
        wake_value = self.session.metadata.annotations.get(runtime.WAKE_ANNOTATION)
        wake_asked = wake_value is not None and wake_token(wake_value) != self.old.observed_wake
        if self.spec.suspend:
            self.suspend()
            return
        asleep = self.old.phase in (Phase.IDLE, Phase.SUSPENDED)
        if asleep:
            wake_at = self.durable_wake_at() if self.old.phase == Phase.IDLE else None
            scheduled = wake_at is not None and self.now >= wake_at
            if not (wake_asked or scheduled or self.old.phase == Phase.SUSPENDED):
                if wake_at is not None:
                    self.plan.requeue((wake_at - self.now).total_seconds())
                for leftover in self.live:
                    self.delete_pod(leftover, "Idle")
                return
            self.wake(wake_value)
            return
        if wake_asked and wake_value is not None:
            self.status.observed_wake = wake_token(wake_value)
        pod = self.drop_duplicates()
        if pod is not None and pod.finished:
            self.replace_finished_pod(pod)
            return
        if pod is None:
            if self.pods:
                return
            if self.old.pod_name is not None:
                if not self.lost_pod_confirmed():
                    return
                self.status.restarts = (self.old.restarts or 0) + 1
                self.event(
                    "PodLost", f"pod {self.old.pod_name} is gone; recreating it", warning=True
                )
            self.create_pod("PodCreated")
            return
        if not self.sync_live_spec(pod):
            return
        self.observe_running_pod(pod)
        self.apply_activity(coalesce=max(idle.duration / 10, timedelta(seconds=1)))
        if self.activity_reports():
            self.idle_check(pod, idle)

    def activity_reports(self) -> bool:
        """Whether runners can report activity. Without a URL they cannot, and a pod's age
        says nothing about a conversation: the session is never scaled down for idleness,
        and a condition says why (rather than sleeping in the middle of a conversation)."""
        if self.config.activity_url:
            self.status.conditions = cond.remove_condition(
                self.status.conditions, cond.ACTIVITY_REPORTS
            )
            return True
        message = (
            "the operator has no activity URL, so runners cannot report activity: this Hybrid "
            "session is not scaled down when idle, and turns and cost stay empty. Run the "
            "operator in the cluster (it then reports to its own Service) or set activityUrl "
            "in its config"
        )
        previous = cond.get_condition(self.old.conditions, cond.ACTIVITY_REPORTS)
        if previous is None or previous.status != "False":
            self.event("NoActivityUrl", message, warning=True)
        self.condition(cond.ACTIVITY_REPORTS, False, "NoActivityUrl", message)
        return False

    def last_activity(self, pod: PodView) -> datetime:
        candidates = [
            parse_time(self.old.last_activity_time),
            self.obs.activity.last_activity if self.obs.activity else None,
            parse_time(pod.started_at or pod.created_at),
            # The countdown starts again when the runner is ready: a slow start (a cold
            # image, a small CPU limit) is not idle time.
            parse_time(pod.ready_since),
        ]
        # A time in the future (a hand-edited status, a skewed clock) is not believed: it
        # would keep the session awake for ever, or overflow `last + timeout`.
        known = [c for c in candidates if c is not None and c <= self.now]
        return max(known) if known else self.now

    def idle_check(self, pod: PodView, idle: Timeout) -> None:
        activity = self.obs.activity
        # Fix: only the current pod's runner can be busy (see Activity.pod_name).
        if activity is not None and activity.pod_name not in (None, pod.name):
            activity = None
        busy = (
            activity is not None
            and activity.busy
            and (
                activity.received_at is None or self.now - activity.received_at < BUSY_REPORT_STALE
            )
        )
        starting_until = self.starting_until(pod)
        if not busy and starting_until is not None:
            # Not Ready yet, so nobody could talk to it: no idle countdown before its Ready
            # change reconciles again (a 5 s idleTimeout scaled woken pods down mid-start).
            self.plan.requeue((starting_until - self.now).total_seconds())
            return
        last = self.last_activity(pod)
        if self.status.last_activity_time is None:
            # Persist the countdown's start, so a restarted operator keeps the deadline.
            self.status.last_activity_time = timestamp(last)
        tasks = activity.background_tasks if activity is not None else 0
        wakeups = activity.scheduled_wakeups if activity is not None else 0
        timeout, why = idle, f"idleTimeout {idle.text}"
        if tasks or wakeups:
            # A build or test run the agent left running, or a wakeup it scheduled (its
            # CLI holds it: it would not fire after a wake), is work under way: ended by
            # the scale-down, so it waits longer (bounded: a server the agent started and
            # forgot would keep the session awake for ever).
            background = Timeout.of(
                self.spec.background_task_timeout, self.config.default_background_task_timeout
            )
            if background.duration > idle.duration:
                timeout = background
                why = f"backgroundTaskTimeout {background.text}: " + work_under_way(tasks, wakeups)
        deadline = last + timeout.duration
        due = parse_time(self.status.next_durable_wakeup_time)
        if (
            due is not None
            and due - 2 * self.durable_wake_lead <= deadline < due + DURABLE_WAKE_GRACE
        ):
            # Asleep now, it would be woken for the task within a minute or two: stay up.
            deadline = due + DURABLE_WAKE_GRACE
        if busy or self.now < deadline:
            # A busy runner reports again while it works; look again at the deadline anyway.
            self.plan.requeue(
                (deadline - self.now).total_seconds()
                if not busy
                else timeout.duration.total_seconds()
            )
            return
        unheard_until = self.unheard_until()
        if unheard_until is not None and self.now < unheard_until:
            self.plan.requeue((unheard_until - self.now).total_seconds())
            return
        self.add_pod_seconds(pod.started_at)
        self.delete_pod(pod, "IdleTimeout")
        idle_for = int((self.now - last).total_seconds())
        message = f"no activity for {idle_for}s ({why}); the volume is kept"
        if tasks:
            message += "; stopping the pod ended its background tasks"
        if wakeups:
            message += "; the wakeups its agent scheduled are dropped"
        if due is not None and due > self.now:
            message += (
                f"; it wakes at {timestamp(due - self.durable_wake_lead)} for its agent's durable "
                f"task due {self.status.next_durable_wakeup_time}"
            )
            self.plan.requeue((due - self.durable_wake_lead - self.now).total_seconds())
        self.status.phase = Phase.IDLE
        self.status.idle_since = self.now_text
        self.status.last_activity_time = timestamp(last)
        self.status.pod_name = None
        self.status.start_time = None
        self.condition(cond.IDLE, True, "IdleTimeout", message)
        self.condition(
            cond.READY, False, "Idle", "scaled to zero; annotate corral.dev/wake to wake"
        )
        self.condition(cond.POD_READY, False, "Idle", "scaled to zero")
        self.event("ScaledDown", message)
        self.plan.scaled_down = True

    def starting_until(self, pod: PodView) -> datetime | None:
        """Until when a pod that is not Ready counts as starting (the kubelet restarts a
        runner that is not ready within the startup probe's window); None when Ready."""
        if pod.ready:
            return None
        created = parse_time(pod.created_at) or parse_time(pod.started_at)
        if created is None or created > self.now:
            return None
        until = created + timedelta(seconds=STARTUP_SECONDS)
        return until if self.now < until else None

    def unheard_until(self) -> datetime | None:
        """Until when a new leader cannot know whether the runner is busy: it has heard no
        report since it began to lead, and a busy runner's heartbeat may not have come yet.
        None when runners do not report at all, or a report has come since."""
        since, activity = self.obs.leading_since, self.obs.activity
        if since is None or not self.config.activity_url:
            return None
        if activity is not None and activity.received_at and activity.received_at >= since:
            return None
        return since + timedelta(seconds=self.config.failover_grace_seconds)

    @property
    def durable_wake_lead(self) -> timedelta:
        """How long before an agent's durable task a sleeping session is woken (only a CLI
        running at that minute runs it; a wake takes seconds, more where the node must pull
        the image). One about to sleep this close to it stays up instead."""
        return timedelta(seconds=self.config.durable_wake_lead_seconds)

    def durable_wake_at(self) -> datetime | None:
        """When a sleeping session wakes for its agent's next durable task: the wake lead
        before it; None when there is none still ahead (a CLI started after it would not
        run it)."""
        due = parse_time(self.old.next_durable_wakeup_time)
        if due is None or self.now >= due:
            return None
        return due - self.durable_wake_lead

    def wake(self, wake_value: str | None) -> None:
        adopted = self.drop_duplicates()
        if wake_value is not None:
            self.status.observed_wake = wake_token(wake_value)
        self.status.wake_count = (self.old.wake_count or 0) + 1
        self.status.idle_since = None
        self.status.last_activity_time = self.now_text
        if wake_value is not None:
            by, reason = "annotation", "Woken"
        elif self.old.phase == Phase.SUSPENDED:
            by, reason = "resume", "Woken"
        else:
            by = f"its agent's durable task due {self.old.next_durable_wakeup_time}"
            reason = "WokenForSchedule"
        self.condition(cond.IDLE, False, "Woken", "woken by " + by)
        if adopted is not None:
            # A pod made by a wake whose status write was lost (operator restart): keep it.
            self.observe_running_pod(adopted)
            self.event("Woken", f"woken; pod {adopted.name} kept")
            self.plan.woke = True
            return
        if self.pods:
            # The scaled-down pod is still terminating: wake once it is gone.
            self.status = self.old.model_copy()
            self.plan.requeue(1.0)
            return
        if self.create_pod(reason):
            self.plan.woke = True
        else:
            self.status.wake_count = self.old.wake_count

    def run(self) -> Plan:
        if self.session.metadata.model_extra and self.session.metadata.model_extra.get(
            "deletionTimestamp"
        ):
            return self.plan  # garbage collection removes the children
        finished = self.old.phase in (Phase.SUCCEEDED, Phase.FAILED)
        if not finished:
            self.spec_ok = self.spec_fits()
        if not self.children_expired():
            self.ensure_children()
        pattern = self.spec.pattern
        finished = self.old.phase in (Phase.SUCCEEDED, Phase.FAILED)
        if not (self.spec.suspend or finished) and self.children_blocked():
            pass  # no pod until the session has children of its own
        elif pattern == Pattern.EPHEMERAL:
            self.ephemeral()
        elif pattern == Pattern.HYBRID:
            self.hybrid()
        else:
            self.long_running()
            if self.obs.activity is not None:
                self.apply_activity(coalesce=timedelta(seconds=60))
        if self.plan.check_credentials or self.plan.confirm_gone:
            # Nothing is done before the lookup: the reconciler decides again with it.
            return Plan(
                check_credentials=self.plan.check_credentials,
                confirm_gone=self.plan.confirm_gone,
            )
        self.keep_phase_honest()
        if self.status.pod_name is None:
            self.status.background_tasks = None  # they ended with the pod
            self.status.scheduled_wakeups = None  # and these with its CLI
        self.status.observed_generation = self.generation
        self.account_cost()
        self.plan.status_patch = _status_patch(self.old, self.status)
        self.plan.status_deferrable = (
            self.old.phase is None
            and self.status.phase == Phase.PENDING
            and not any(e.type == "Warning" for e in self.plan.events)
        )
        # A phase change gets an Event unless a more specific one says it already, or the
        # status itself may still be held back (its Event would repeat on every reconcile).
        changed = self.status.phase != self.old.phase and self.status.phase
        # Nor does a session's first start: status shows it, and an Event per new session
        # is an API write per session at scale.
        first_start = self.status.phase in (Phase.PENDING, Phase.RUNNING) and (
            (self.status.attempts or 0) <= 1 and not self.status.wake_count
        )
        if changed and not self.plan.events and not self.plan.status_deferrable and not first_start:
            self.event("Phase" + str(self.status.phase), f"phase is now {self.status.phase}")
        return self.plan


def decide(observed: Observed, config: OperatorConfig) -> Plan:
    return _Decision(observed, config).run()
