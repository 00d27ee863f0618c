"""Issue 14's model proxy on the real node: session pods hold no key, only a credential
worth something at the gateway from their own pod; turns work through the gateway, which
sends the real key upstream (the fake model refuses any other), and meters every token.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_support import DEAR_MODEL, MODEL_KEY, GatewayClient, Release, Sessions, ready_pod, spec
from kubernetes import client

from corral.testing.anthropic_script import ReplyUsage, TextStep, bash
from corral.testing.fake_anthropic import FakeAnthropic
from corral.testing.kube import wait_for

pytestmark = pytest.mark.e2e

# Run inside the pod by the agent's Bash tool. The patterns are cut in two in the command
# so that the command itself (in the scanned /proc/*/cmdline) does not contain them.
KEY_PART = MODEL_KEY[-16:]


def _split(text: str) -> str:
    return f'"{text[:8]}""{text[8:]}"'


def scan(runner_secrets: dict[str, str]) -> str:
    """The agent's search for the model key and the pod's model credential in every
    process's environment and command line it can read, and for each of the runner's own
    secrets in its own environment and its CLIs' (tini, PID 1, keeps the pod's: see
    docs/hardening.md); whether it can read the runner's environment."""
    searches = "".join(
        f'echo "{name}-IN-AGENT-ENVS=$(printf %s "$A" | grep -c -F {_split(value)})"; '
        for name, value in runner_secrets.items()
    )
    return (
        f'P={_split(KEY_PART)}; C="corral-""session-"; '
        "E=$( { env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do "
        "tr '\\0' '\\n' < \"$f\"; echo; done; } 2>/dev/null ); "
        'echo "KEY-IN-PROCS=$(printf %s "$E" | grep -c -F "$P")"; '
        'echo "CREDENTIAL-IN-PROCS=$(printf %s "$E" | grep -c -F "$C")"; '
        # The agent's own environment and its CLIs' (their program is the bundled CLI).
        'B="_bundled""/claude"; A=$( env; for p in /proc/[0-9]*; do '
        "case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in *\"$B\"*) "
        "tr '\\0' '\\n' < $p/environ 2>/dev/null; echo;; esac; done ); "
        "echo \"CLIS=$(for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; "
        'done | grep -c -F "$B")"; '
        f"{searches}"
        "R=$(cat /proc/1/task/1/children); R=${R%% *}; "
        'echo "RUNNER-ENVIRON-READABLE=$(cat /proc/$R/environ > /dev/null 2>&1 && echo yes || '
        'echo no)"; '
        'echo "KEY-IN-FILES=$(grep -r -l -s -F "$P" /etc /home /tmp /session /run /var '
        '/dev/termination-log 2>/dev/null | wc -l)"; '
        'echo "PROCS=$(ls -d /proc/[0-9]* | wc -l)"; echo "BASE=$ANTHROPIC_BASE_URL"'
    )


BASH_USAGE = ReplyUsage(
    input_tokens=321, output_tokens=12, cache_read_input_tokens=1000,
    cache_creation_input_tokens=50,
)  # fmt: skip
TEXT_USAGE = ReplyUsage(input_tokens=111, output_tokens=7)


def tool_output(fake: FakeAnthropic) -> str:
    for body in fake.message_bodies():
        for message in body.get("messages", []):
            for block in message.get("content") if isinstance(message.get("content"), list) else ():
                if block.get("type") == "tool_result":
                    inner = block.get("content")
                    if isinstance(inner, list):
                        inner = "".join(part.get("text", "") for part in inner)
                    return str(inner)
    return ""


def fields(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_a_turn_goes_through_the_model_proxy_and_no_key_is_in_the_pod(
    operator: Release,
    gateway: GatewayClient,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
) -> None:
    sessions = Sessions(custom, namespace)
    # No egress to the fake model of its own: the gateway is the only way to a model.
    sessions.create("keyless", spec("LongRunning", network={}))
    pod = ready_pod(core, namespace, "keyless")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["ANTHROPIC_API_KEY"].value.startswith("corral-session-")
    assert env["ANTHROPIC_API_KEY"].value_from is None
    assert not any(v.secret for v in pod.spec.volumes), pod.spec.volumes
    # The runner's own: its activity token and the credential the gateway presents to it.
    runner_secrets = {
        "ACTIVITY-TOKEN": env["CORRAL_ACTIVITY_TOKEN"].value,
        "RUNNER-CREDENTIAL": env["CORRAL_GATEWAY_CREDENTIAL"].value,
    }
    fake.add(bash(scan(runner_secrets), usage=BASH_USAGE))
    fake.set_default(TextStep(text="scan done", usage=TEXT_USAGE))

    reply = gateway.send(namespace, "keyless", "scan yourself for keys")
    assert reply.status == 200, reply
    result = reply.events[-1]
    assert result["type"] == "result" and result["subtype"] == "success", reply.events[-3:]
    found = fields(tool_output(fake))
    assert found.get("KEY-IN-PROCS") == "0", found
    assert found.get("KEY-IN-FILES") == "0", found
    # Nor the runner's own in the agent's environment or its CLIs': the runner took them
    # out of its environment before starting them, and its own cannot be read.
    assert int(found.get("CLIS", "0")) >= 1, found
    assert found.get("ACTIVITY-TOKEN-IN-AGENT-ENVS") == "0", found
    assert found.get("RUNNER-CREDENTIAL-IN-AGENT-ENVS") == "0", found
    assert found.get("RUNNER-ENVIRON-READABLE") == "no", found
    # The scan sees the pod's processes: its own credential shows up in their environment.
    assert int(found.get("CREDENTIAL-IN-PROCS", "0")) >= 1 and int(found["PROCS"]) >= 3, found
    assert found["BASE"] == f"http://{operator.name}-gateway.{operator.namespace}.svc:8082"
    # Every call reached the fake with the real key (it answers 401 to anything else).
    requests = [r for r in fake.requests if r.path.startswith("/v1/messages")]
    assert requests and all(r.key_ok for r in requests), [(r.path, r.key_ok) for r in requests]

    # Metering: status counts exactly the usage the fake reported for each call.
    calls = len(fake.message_bodies())
    expected = {
        "requests": calls,
        "inputTokens": 321 + 111 * (calls - 1),
        "outputTokens": 12 + 7 * (calls - 1),
        "cacheReadInputTokens": 1000,
        "cacheCreationInputTokens": 50,
    }

    def metered() -> dict[str, Any] | None:
        usage = sessions.status("keyless").get("modelUsage") or {}
        return usage if usage.get("requests") == calls else None

    usage = wait_for(metered, timeout=60, interval=1, what="metered usage in status")
    assert {k: usage[k] for k in expected} == expected, usage
    assert usage["costUsd"] > 0


def test_a_session_over_budget_ends_its_turn_with_the_reason_and_the_condition(
    operator: Release,
    gateway: GatewayClient,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    fake: FakeAnthropic,
) -> None:
    sessions = Sessions(custom, namespace)
    sessions.create("frugal", spec("LongRunning", network={}, maxBudgetUsd=0.01, model=DEAR_MODEL))
    ready_pod(core, namespace, "frugal")
    # 100 tokens of the dear model cost 0.1 USD at the gateway (ten times the budget) and
    # well under a cent in the SDK's own estimate, which so does not stop the run first.
    fake.set_default(TextStep(text="costly", usage=ReplyUsage(input_tokens=100, output_tokens=1)))
    gateway.send(namespace, "frugal", "spend it")

    def spent() -> float:
        usage = sessions.status("frugal").get("modelUsage") or {}
        return float(usage.get("costUsd", 0))

    wait_for(lambda: spent() >= 0.01, timeout=60, interval=1, what="the spend in status")
    calls = len(fake.message_bodies())
    reply = gateway.send(namespace, "frugal", "spend more")
    assert reply.status == 200, reply
    result = reply.events[-1]
    assert result["type"] == "result" and result["is_error"] is True, result
    assert result.get("api_error_status") == 402, result
    assert "spec.maxBudgetUsd is 0.01 USD" in json.dumps(result), result
    assert len(fake.message_bodies()) == calls  # refused at the gateway

    def condition() -> dict[str, Any] | None:
        for found in sessions.status("frugal").get("conditions") or ():
            if found["type"] == "BudgetExceeded" and found["status"] == "True":
                return dict(found)
        return None

    exceeded = wait_for(condition, timeout=60, interval=1, what="condition BudgetExceeded")
    assert exceeded["reason"] == "SessionBudget", exceeded

    def posted() -> bool:
        events = core.list_namespaced_event(namespace).items
        return any(e.reason == "BudgetExceeded" and e.involved_object.name == "frugal"
                   for e in events)  # fmt: skip

    wait_for(posted, timeout=60, interval=1, what="the BudgetExceeded Event")
