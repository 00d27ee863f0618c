"""What kopf's diff base costs per session event, with kopf's defaults and with Corral's.

    python -m bench.kopf_diffbase --events 5000 --rounds 5

kopf builds a diff base on every watch event, for change handlers: the stored base is
fetched, the body's "essence" deep-copied out of it, and both copied again to clean out its
progress annotations. Corral registers no change handlers and sets `NoDiffBase`
(corral.controller.handlers.configure). This times that work for one LongRunning session's
body as the operator sees it at rest (examples/long-running.yaml with the metadata the API
server adds and the status the operator writes), with kopf's default settings and with the
settings Corral's startup handler makes, alternately per round, in microseconds per event.
CPU time of this process only: the same on a quiet machine and a busy one, within a few %.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from pathlib import Path
from typing import Any

import kopf
import yaml

from bench.report import this_command
from bench.run import machine
from corral.controller.handlers import configure

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "long-running.yaml"
NOW = "2026-12-05T10:00:00Z"


def session_at_rest() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    name = body["metadata"]["name"]
    body["metadata"] |= {
        "namespace": "team-a",
        "uid": "6f1c2a4e-0d7b-4f0e-9a51-3c2b8e7d1f00",
        "resourceVersion": "482913",
        "generation": 1,
        "creationTimestamp": NOW,
        "managedFields": [
            {
                "manager": manager,
                "operation": "Update",
                "apiVersion": "corral.dev/v1alpha1",
                "time": NOW,
                "fieldsType": "FieldsV1",
                "fieldsV1": {f"f:{stanza}": {f"f:{key}": {} for key in body.get(stanza, {})}},
                **({"subresource": "status"} if stanza == "status" else {}),
            }
            for manager, stanza in (("kubectl-client-side-apply", "spec"), ("corral", "status"))
        ],
    }
    body["status"] = {
        "phase": "Running",
        "observedGeneration": 1,
        "podName": f"{name}-7k2p9",
        "serviceName": name,
        "endpoint": f"http://{name}.team-a.svc:8080",
        "startTime": NOW,
        "lastActivityTime": NOW,
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": NOW,
                "observedGeneration": 1,
            }
            for kind, reason, message in (
                ("Ready", "RunnerReady", "The runner answers on its Service."),
                ("PodScheduled", "Scheduled", "The pod is on a node."),
                ("ActivityReports", "Reporting", "The runner reports its activity."),
            )
        ],
    }
    return body


def per_event_us(settings: kopf.OperatorSettings, body: kopf.Body, events: int) -> float:
    diffbase = settings.persistence.diffbase_storage
    progress = settings.persistence.progress_storage
    started = time.process_time()
    for _ in range(events):
        old = diffbase.fetch(body=body)
        new = diffbase.build(body=body, extra_fields=())
        if old is not None:
            progress.clear(essence=old)
        progress.clear(essence=new)
    return (time.process_time() - started) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    body = kopf.Body(session_at_rest())
    variants = {"kopf defaults": kopf.OperatorSettings(), "corral": kopf.OperatorSettings()}
    configure(settings=variants["corral"])
    rows = [
        {
            "round": round_,
            "variant": name,
            "us_per_event": round(per_event_us(s, body, args.events), 2),
        }
        for round_ in range(args.rounds)
        for name, s in variants.items()
    ]
    median = {
        name: statistics.median(r["us_per_event"] for r in rows if r["variant"] == name)
        for name in variants
    }
    print(json.dumps(median))
    if args.out:
        result = {
            "machine": machine(),
            "command": this_command(),
            "kopf": importlib.metadata.version("kopf"),
            "events": args.events,
            "rows": rows,
            "median_us_per_event": median,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
