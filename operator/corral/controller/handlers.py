"""kopf handlers: thin adapters from AgentSession watch events to the Controller.

kopf watches the sessions; the children (pods, Services, NetworkPolicies, PVCs) are watched
by the Controller's own informers with a server-side label selector (see
corral.kube.informer), which spares the operator every other pod in the cluster.
Only `@kopf.on.event` is used: no finalizers, no diff-base or progress annotations.
"""

from __future__ import annotations

from typing import Any

import kopf

from corral.api.v1alpha1 import GROUP, PLURAL, VERSION
from corral.controller.controller import Controller


@kopf.on.event(GROUP, VERSION, PLURAL)
def session_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    controller.on_session(event["type"], dict(event["object"]))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Level-based, event-driven handlers only: each of kopf's per-object annotations,
    # finalizers and handler Events would cost API writes per session.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
