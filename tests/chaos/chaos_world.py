"""One chaos test's world on the chaos cluster: namespaces, volumes, load, operators."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from corral.testing.chart_rbac import ChartIdentity
from corral.testing.faults import ControlPlane
from corral.testing.kube import create_namespace
from corral.testing.load import Expected, Load, Sessions, bind_volumes, wait_converged
from corral.testing.operator import OperatorProcess, kwok_operator_config
from testrun import RESTRICTED_LABELS

THREADS = 8


def make_namespace(core: client.CoreV1Api, name: str) -> str:
    # After an API server restart the default ServiceAccount may take a minute.
    return create_namespace(core, name, RESTRICTED_LABELS, timeout=120)


@dataclass
class World:
    """One test's namespaces, load, volumes and operators on the chaos cluster."""

    plane: ControlPlane
    kubeconfig: Path
    api: client.ApiClient
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    system: str
    namespace: str
    identity: ChartIdentity
    workdir: Path
    load: Load
    sessions: Sessions
    pool: ThreadPoolExecutor
    lease: str
    operators: list[OperatorProcess] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def operator(self, name: str, **options: Any) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=options.pop("kubeconfig", self.identity.kubeconfig),
            config=options.pop("config", kwok_operator_config(self.system)),
            workdir=self.workdir,
            namespaces=[self.namespace],
            lease_name=self.lease,
            identity=name,
            **options,
        )
        self.operators.append(process)
        return process.start()

    def bind_volumes(self, names: list[str]) -> None:
        """PersistentVolumes bound in advance to these sessions' claims."""
        self.volumes += bind_volumes(self.core, self.namespace, names)

    def converge(self, expected: Expected, timeout: float = 240.0) -> dict[str, float]:
        """`wait_converged` on this world, KWOK restarted if it left a pod Pending."""
        return wait_converged(
            self.sessions,
            self.core,
            expected,
            timeout,
            resync_kwok=lambda: self.plane.restart("kwok"),
        )

    def create(self, names: list[str]) -> list[Any]:
        """Start creating `names` on the pool (each retried through outages)."""
        return [self.pool.submit(self.sessions.create, name) for name in names]


DENIAL = re.compile(
    r'(?:"(?P<name>[^"]+)" is forbidden: )?'
    r'User "(?P<user>[^"]+)" cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)"'
    r' in API group "(?P<group>[^"]*)"(?: in the namespace "(?P<namespace>[^"]+)")?'
)


def lasting_denials(api: client.ApiClient, lines: list[str]) -> list[str]:
    """The RBAC refusals in `lines` that the authorizer still gives now. A restarted API
    server refuses for a moment what RBAC allows (its authorizer's cache is still empty):
    those are the fault, not a right the chart lacks."""
    authorization = client.AuthorizationV1Api(api)
    lasting = []
    for line in lines:
        try:
            message = str(json.loads(line).get("msg", ""))
        except ValueError:
            message = line
        found = DENIAL.search(message)
        if found is None:
            lasting.append(line)
            continue
        resource, _, sub = found["resource"].partition("/")
        attributes = client.V1ResourceAttributes(
            verb=found["verb"],
            group=found["group"],
            resource=resource,
            subresource=sub or None,
            namespace=found["namespace"],
            name=found["name"],
        )
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=found["user"], resource_attributes=attributes
            )
        )
        status = authorization.create_subject_access_review(review).status
        if not (status is not None and status.allowed):
            lasting.append(line)
    return lasting
