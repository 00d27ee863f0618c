"""The operator's own HTTP port: health, readiness, Prometheus metrics, runner activity."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from corral.api.activity import ACTIVITY_PATH, ActivityReport
from corral.controller.controller import Controller

MAX_REPORT_BYTES = 64 * 1024


def make_app(controller: Controller) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if controller.ready:
            return web.Response(text="ok")
        return web.Response(status=503, text="starting")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def activity(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_REPORT_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_REPORT_BYTES, actual_size=request.content_length or 0
            )
        try:
            report = ActivityReport.model_validate_json(await request.read())
        except ValidationError as error:
            return web.json_response({"error": error.errors(include_url=False)}, status=400)
        if not controller.leading.is_set():
            return web.json_response({"error": "not the leader; retry"}, status=503)
        if not controller.on_activity(report):
            return web.json_response({"error": "no such session pod"}, status=404)
        return web.json_response({"accepted": True}, status=202)

    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post(ACTIVITY_PATH, activity)
    return app
