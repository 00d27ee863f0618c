"""Scenario 3: API Priority and Fairness starves the operator for a minute, then lets go.

A FlowSchema matching the operator's ServiceAccount (every request it makes) sends it to a
PriorityLevelConfiguration with the smallest concurrency there is (one share of the API
server's seats, nothing lent or borrowed, excess requests rejected at once): it gets 429s.
Meanwhile half the awake sessions are created and every sleeper is due for scale-down.
Released, the operator must converge with nothing lost or doubled; figures (429s counted by
the API server, time to converge, requests) go to docs/benchmarks/chaos.json."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
from chaos_scenarios import assert_nothing_doubled, by_index, start_sleepers
from chaos_support import OperatorFigures, record_figures
from chaos_world import World
from kubernetes import client

from corral.testing.kube import wait_for
from corral.testing.load import (
    Expected,
    PodHistory,
    claim_uids,
    retrying,
    runner_pods,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
STARVE_SECONDS = float(os.environ.get("CORRAL_CHAOS_STARVE_SECONDS", "60"))


def apf_objects(name: str, namespace: str, service_account: str) -> list[dict[str, Any]]:
    api_version = "flowcontrol.apiserver.k8s.io/v1"
    level = {
        "apiVersion": api_version,
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "apiVersion": api_version,
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 100,  # before every built-in schema but exempt (1)
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": service_account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }
    return [level, schema]


SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def apf_counts(world: World, level: str) -> dict[str, float]:
    """The API server's APF counters of one priority level: dispatched and rejected."""
    counts = {"dispatched": 0.0, "rejected": 0.0}
    for line in world.plane.apiserver_metrics().splitlines():
        found = SAMPLE.match(line)
        if not found or f'priority_level="{level}"' not in found["labels"]:
            continue
        if found["name"] == "apiserver_flowcontrol_dispatched_requests_total":
            counts["dispatched"] += float(found["value"])
        elif found["name"] == "apiserver_flowcontrol_rejected_requests_total":
            counts["rejected"] += float(found["value"])
    return counts


def test_apf_starves_the_operator_for_a_minute(world: World) -> None:
    load = world.load
    operator = world.operator("chaos-apf")
    operator.wait_leader()
    flowcontrol = client.FlowcontrolApiserverV1Api(world.api)
    name = f"{world.system}-starve"
    level, schema = apf_objects(name, world.system, world.identity.service_account)
    awake = by_index(load.awake)
    before, during = awake[: len(awake) // 2], awake[len(awake) // 2 :]
    with PodHistory(world.core, world.namespace) as history:
        start_sleepers(world, operator)
        for future in world.create(before):
            future.result()
        steady = Expected(awake=set(before) | set(load.sleepers), asleep=set())
        world.converge(steady)
        claims = claim_uids(world.core, world.namespace)
        figures = OperatorFigures(operator).start()
        flowcontrol.create_priority_level_configuration(level)
        flowcontrol.create_flow_schema(schema)
        wait_for(  # the API server's APF controller has taken the new level in
            lambda: f'priority_level="{name}"' in world.plane.apiserver_metrics(),
            timeout=30,
            what="the new priority level in use",
        )
        starved = time.monotonic()
        try:
            for future in world.create(during):
                future.result()
            for sleeper in load.sleepers:
                world.sessions.patch(sleeper, {"spec": {"idleTimeout": "1s"}})
            wait_for(
                lambda: apf_counts(world, name)["rejected"] > 0,
                timeout=STARVE_SECONDS,
                what="the operator's first 429",
            )
            time.sleep(max(0.0, STARVE_SECONDS - (time.monotonic() - starved)))
            during_pods = sum(
                1
                for p in runner_pods(world.core, world.namespace)
                if p.metadata.labels.get("corral.dev/session") in set(during)
            )
            counts = apf_counts(world, name)
        finally:
            retrying(lambda: flowcontrol.delete_flow_schema(name), ok_statuses=(404,))
            retrying(
                lambda: flowcontrol.delete_priority_level_configuration(name), ok_statuses=(404,)
            )
        released = time.monotonic()
        expected = Expected(awake=set(awake), asleep=set(load.sleepers), claims=claims)
        converge = world.converge(expected)
        time.sleep(2)
    checks = assert_nothing_doubled(world, history)
    assert counts["rejected"] > 0
    record_figures(
        "3 APF starves the operator (429) for a minute",
        {
            "sessions": len(load.all),
            **load.counts(),
            "starved_seconds": round(released - starved, 1),
            "apf_rejected_429": int(counts["rejected"]),
            "apf_dispatched_while_starved": int(counts["dispatched"]),
            "during_starvation": f"{during_pods}/{len(during)} new sessions got a pod",
            "operator_done_after_release_seconds": converge["operator_done"],
            "converged_after_release_seconds": converge["converged"],
            **figures.since(),
            **checks,
        },
    )
