"""The FastAPI application of the service, built by `build_app` for one API replica.

Routes live by resource (`health`, `images`, `videos`, `jobs`, `page`); what they share is an
`ApiContext`; the models and video workers are reached through a `ModelBackend`, so nothing here
knows how they are hosted. Every error leaves as ``{"error": {"code", "message"}}`` with a
stable code and a 4xx/5xx status (`service.api.errors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from fastapi import Depends, FastAPI

from pipeline.schema import SCHEMA_VERSION
from service.api.backend import ApiMetrics
from service.api.context import ApiContext
from service.api.errors import JsonBodyLimit, add_error_handlers, publish_contract
from service.api.health import add_health_routes
from service.api.images import add_image_routes
from service.api.jobs import add_job_routes
from service.api.pacing import BodyPace
from service.api.page import add_page_routes
from service.api.videos import add_media_route, add_upload_route

logger = logging.getLogger(__name__)


def build_app(ctx: ApiContext) -> FastAPI:
    """The whole HTTP API of one replica, with its settings, keys and backend in ``ctx``."""
    settings = ctx.settings
    protected = [Depends(ctx.authenticate)]
    app = FastAPI(
        title="pose-service",
        version=SCHEMA_VERSION,
        description="4D-Humans (ViTDet -> HMR2.0 -> PHALP) over HTTP: people, SMPL, cameras and keypoints as JSON.",
        docs_url="/docs" if settings.public_docs else None,
        redoc_url=None,
        dependencies=[] if settings.public_docs else protected,
    )
    add_error_handlers(app, on_error=ctx.count_error, map_error=ctx.backend.map_error)
    add_health_routes(app, ctx, protected)
    add_image_routes(app, ctx, protected)
    add_upload_route(app, ctx, protected)
    add_job_routes(app, ctx, protected)
    add_media_route(app, ctx, protected)
    if settings.public_docs:
        add_page_routes(app)
    publish_contract(app, key_required=ctx.key_required)
    app.add_middleware(JsonBodyLimit)
    app.add_middleware(BodyPace, min_bytes_per_s=settings.min_body_bytes_per_s, grace_s=settings.body_grace_s)
    app.add_middleware(RequestMetrics, metrics=ctx.metrics)
    return app


class RequestMetrics:
    """ASGI middleware: each request's route, status and latency to the metrics. A plain ASGI
    wrapper rather than Starlette's ``BaseHTTPMiddleware``, whose helper tasks would leave the
    failure of a cancelled body stream unretrieved (logged as a task error) when a client hangs up."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler leaves as Starlette's 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            # The host cancelled the request (Serve does when its client hangs up): no answer is
            # sent, and it is not a failure of the service.
            status = 499
            path = getattr(scope.get("route"), "path", "unmatched")
            logger.info("client disconnected during %s %s (request cancelled)", scope.get("method"), scope.get("path"))
            self.metrics.error(path, "client_disconnected")
            raise
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request(path, status, time.perf_counter() - started)
