"""What a pod's volumes cost the kubelet's start of it, on the local real node.

    CORRAL_STATE_DIR=/tmp/kv CORRAL_KUBELET_V=4 CORRAL_CLUSTER_PORT_BASE=23000 \\
        corral cluster up --real-node
    CORRAL_STATE_DIR=/tmp/kv python -m bench.kubelet_volume_wait --pods 6 --out FILE
    CORRAL_STATE_DIR=/tmp/kv corral cluster down

Creates pods bound to the real node, alternately without volumes and with an emptyDir and
a ConfigMap (a session pod has several: a read-only root file system needs writable
emptyDirs, the session file is a projected ConfigMap, a Hybrid session's state a claim),
one at a time, and reads the kubelet's own log (level 4 or more) for each pod's steps in
milliseconds after its `SyncPod enter`: waiting for volumes, volumes mounted, sandbox
created, `SyncPod exit` (its containers started). The kubelet's volume manager checks
whether a pod's volumes are mounted at once and then every 300 ms (a constant,
`podAttachAndMountRetryInterval`); its populator and reconciler loops run every 100 ms, so
the first check never finds them mounted.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.cluster.control_plane import kubectl
from corral.cluster.layout import Layout
from corral.cluster.paths import state_dir

BUSYBOX = "corral.dev/busybox:1.35.0-4-deb12u1-b1"
NODE = "corral-node"
STEPS = {
    "waiting_for_volumes": "Waiting for volumes to attach and mount",
    "volumes_mounted": "All volumes are attached and mounted",
    "sandbox_created": "Created PodSandbox for pod",
    "sync_exit": "SyncPod exit",
}
LINE = re.compile(r'^I\d{4} (\d\d:\d\d:\d\d\.\d+)\s+\d+ \S+\] "([^"]+)".*pod="default/([\w-]+)"')


def pod(name: str, volumes: bool) -> dict[str, Any]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cfg", "mountPath": "/etc/kv"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "c",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "volumeMounts": mounts if volumes else [],
                }
            ],
            "volumes": (
                [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "kv"}}]
                if volumes
                else []
            ),
        },
    }


def steps_from_log(log: str, names: list[str]) -> dict[str, dict[str, float]]:
    """Each pod's steps, ms after its first `SyncPod enter`, from the kubelet's log."""
    seen: dict[str, dict[str, float]] = {}
    for line in log.splitlines():
        match = LINE.match(line)
        if not match or match.group(3) not in names:
            continue
        at = datetime.strptime(match.group(1), "%H:%M:%S.%f").timestamp()
        marks = seen.setdefault(match.group(3), {})
        if match.group(2).startswith("SyncPod enter"):
            marks.setdefault("enter", at)
        for step, text in STEPS.items():
            if match.group(2).startswith(text):
                marks.setdefault(step, at)
    return {
        name: {k: round((v - marks["enter"]) * 1000, 1) for k, v in marks.items() if k != "enter"}
        for name, marks in seen.items()
        if "enter" in marks
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(root=state_dir())
    kubectl(layout, "create", "configmap", "kv", "--from-literal=a=b")
    names: list[str] = []
    try:
        for i in range(args.pods):
            for kind in ("novol", "vol"):
                name = f"{kind}-{i}"
                names.append(name)
                kubectl(layout, "create", "-f", "-", stdin=json.dumps(pod(name, kind == "vol")))
                kubectl(layout, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s")
                time.sleep(1)
        steps = steps_from_log(layout.log_file("node-kubelet").read_text(errors="replace"), names)
    finally:
        kubectl(layout, "delete", "pod", *names, "--wait=false", "--ignore-not-found")
        kubectl(layout, "delete", "configmap", "kv", "--ignore-not-found")
    summary = {
        kind: {
            step: round(
                statistics.median(s[step] for n, s in steps.items() if n.startswith(f"{kind}-")), 1
            )
            for step in STEPS
            if all(step in s for n, s in steps.items() if n.startswith(f"{kind}-"))
        }
        for kind in ("novol", "vol")
    }
    return {"pods_per_kind": args.pods, "median_ms": summary, "pods": steps}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pods", type=int, default=6, help="pods of each kind")
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    result = main(arguments)
    if arguments.out:
        arguments.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median_ms"], indent=1))
