"""The FastAPI application of the service, built by `build_app` for one API replica.

Routes live by resource (`health`, `images`, `videos`, `jobs`, `page`); what they share is an
`ApiContext`; the models and video workers are reached through a `ModelBackend`, so nothing here
knows how they are hosted. Every error leaves as ``{"error": {"code", "message"}}`` with a
stable code and a 4xx/5xx status (`service.api.errors`).
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from fastapi import Depends, FastAPI, Request

from pipeline.schema import SCHEMA_VERSION
from service.api.context import ApiContext
from service.api.errors import JsonBodyLimit, add_error_handlers, publish_contract
from service.api.health import add_health_routes
from service.api.images import add_image_routes
from service.api.jobs import add_job_routes
from service.api.page import add_page_routes
from service.api.videos import add_media_route, add_upload_route


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

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.request(path, response.status_code, time.perf_counter() - started)
        return response

    return app
