"""The operator's own HTTP port: health, readiness, Prometheus metrics, runner activity."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from corral.api.activity import (
    ACTIVITY_PATH,
    AUTHORIZATION_HEADER,
    MAX_REPORT_BYTES,
    ActivityReport,
    bearer_token,
    token_matches,
)
from corral.controller import metrics
from corral.controller.controller import Controller
from corral.rate import KeyedBuckets

NOT_THIS_PODS = "the token is not this session pod's"
# Activity reports taken per session pod: a runner reports when a turn starts and ends and
# every 30 s while busy; this takes several quick turns a second, and bounds a pod whose
# agent posts reports itself (a status write each) to as many.
REPORTS_PER_SECOND = 5.0
REPORTS_BURST = 50


def _refuse(status: int, reason: str, error: object) -> web.Response:
    metrics.ACTIVITY_REPORTS_REJECTED.labels(reason=reason).inc()
    return web.json_response({"error": error}, status=status)


def make_app(controller: Controller) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if controller.ready:
            return web.Response(text="ok")
        return web.Response(status=503, text="starting")

    async def metrics_page(_: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def activity(request: web.Request) -> web.Response:
        """A runner's report: authenticated (401/403), bounded (413/400), then kept."""
        if (request.content_length or 0) > MAX_REPORT_BYTES:
            metrics.ACTIVITY_REPORTS_REJECTED.labels(reason="invalid").inc()
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_REPORT_BYTES, actual_size=request.content_length or 0
            )
        token = bearer_token(request.headers.get(AUTHORIZATION_HEADER))
        if token is None:
            return _refuse(401, "unauthenticated", "send Authorization: Bearer <pod token>")
        try:
            report = ActivityReport.model_validate_json(await request.read())
        except ValidationError as error:
            details = json.loads(error.json(include_url=False, include_input=False))
            return _refuse(400, "invalid", details)
        if not controller.leading.is_set():
            return web.json_response({"error": "not the leader; retry"}, status=503)
        session = controller.store.sessions.get((report.namespace, report.name))
        if session is None:
            # Answered as a wrong token is: no token holder learns which sessions exist.
            return _refuse(403, "unknown", NOT_THIS_PODS)
        identity = (report.namespace, report.name, session.metadata.uid or "", report.pod_name)
        if not token_matches(controller.config.activity_keys, token, *identity):
            # Another session's (or pod's) identity, or a made-up token: not applied.
            return _refuse(403, "forbidden", NOT_THIS_PODS)
        wait = reports.take(f"{report.namespace}/{report.name}/{report.pod_name}")
        if wait is not None:
            # A runner reports when a turn starts or ends and every 30 s while busy; one
            # reporting far more often (its agent holds the token) must not become a
            # status write per report. The runner sends its latest state again later.
            response = _refuse(429, "limited", "too many reports from this pod; retry")
            response.headers["Retry-After"] = str(wait)
            return response
        if not controller.on_activity(report):
            return _refuse(404, "unknown", "no such session pod")
        return web.json_response({"accepted": True}, status=202)

    reports = KeyedBuckets(REPORTS_PER_SECOND, REPORTS_BURST)

    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_post(ACTIVITY_PATH, activity)
    return app
