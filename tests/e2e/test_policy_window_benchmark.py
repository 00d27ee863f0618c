"""How long a new pod's egress goes unfiltered before the NetworkPolicy agent covers it.

Skipped unless CORRAL_BENCH_POLICY_WINDOW=N. kube-router, the node's NetworkPolicy agent,
filters a pod's traffic from the firewall chain it makes for the pod at its next sync after
the pod's events; until then nothing filters it. Measured here: N pods, one at a time, each
selected by a NetworkPolicy that allows no egress (made before them, as a session's is
made before its pod), each trying the node's private decoy (a server no policy here allows)
from its first moment, one try after another for 6 s (a few ms a try while the
decoy answers, 1 s once the policy drops it); then a pod that no policy selects, to show
the decoy answers. Per pod: how many tries connected and until when, in seconds after its
first try. Raw numbers: $CORRAL_BENCH_OUT (default docs/benchmarks/policy-window.json).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import busybox_pod, delete_quietly, kubectl
from kubernetes import client

from corral.cluster import node
from corral.testing.kube import wait_for
from corral.testing.outside import Decoy

pytestmark = pytest.mark.e2e

PODS = int(os.environ.get("CORRAL_BENCH_POLICY_WINDOW", "0"))
OUT = Path(os.environ.get("CORRAL_BENCH_OUT", "docs/benchmarks/policy-window.json"))
DECOY_PORT = 8089
TRY_SECONDS = 6
# Each try: the time (the node's uptime, 10 ms) and what the decoy said ("" when shut).
LOOP = (
    f"end=$(( $(cut -d. -f1 /proc/uptime) + {TRY_SECONDS} )); "
    f'while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do '
    "t=$(cut -d' ' -f1 /proc/uptime); "
    f"said=$(nc -w 1 {node.PRIVATE_DECOY_IP} {DECOY_PORT} </dev/null 2>/dev/null); "
    'echo "$t $said"; done; echo done; sleep 3600'
)


@pytest.fixture
def decoy(node_layout: node.NodeLayout) -> Iterator[Decoy]:
    served = Decoy(node_layout.outside_netns, node.PRIVATE_DECOY_IP, DECOY_PORT).start()
    yield served
    served.stop()


def tries(kubeconfig: Path, namespace: str, pod: str) -> list[tuple[float, bool]]:
    def finished() -> str | None:
        out = kubectl(kubeconfig, "-n", namespace, "logs", pod).stdout
        return out if "\ndone" in out else None

    logs = wait_for(finished, timeout=TRY_SECONDS + 60, interval=1, what=f"{pod}'s tries")
    found = []
    for line in logs.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) >= 1 and parts[0].replace(".", "").isdigit():
            found.append((float(parts[0]), len(parts) == 2 and "decoy" in parts[1]))
    return found


@pytest.mark.skipif(PODS == 0, reason="set CORRAL_BENCH_POLICY_WINDOW=N to run")
def test_how_long_a_new_pods_egress_goes_unfiltered(
    kubeconfig: Path,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    decoy: Decoy,
) -> None:
    networking = client.NetworkingV1Api(api_client)
    deny = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-egress"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app": "window"}),
            policy_types=["Egress"],
            egress=[],
        ),
    )
    networking.create_namespaced_network_policy(namespace, deny)
    time.sleep(3)  # the policy itself synced before the pods come
    samples = []
    for index in range(PODS):
        name = f"window-{index}"
        busybox_pod(core, namespace, name, ["sh", "-c", LOOP], {"app": "window"})
        got = tries(kubeconfig, namespace, name)
        first = got[0][0]
        opened = [t - first for t, ok in got if ok]
        samples.append(
            {
                "tries": len(got),
                "connected": len(opened),
                "last_connected_s": round(max(opened), 2) if opened else None,
                "first_refused_s": next((round(t - first, 2) for t, ok in got if not ok), None),
            }
        )
        print(name, samples[-1])
        delete_quietly(core, namespace, name)
    busybox_pod(core, namespace, "window-free", ["sh", "-c", LOOP], {"app": "free"})
    free = tries(kubeconfig, namespace, "window-free")
    reachable = sum(ok for _, ok in free) / len(free)
    print("unselected pod: share of tries connected", reachable)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"pods": samples, "unselected_connected_share": reachable}, indent=1) + "\n"
    )
    assert reachable > 0.9  # the decoy answers: "shut" above is the policy
