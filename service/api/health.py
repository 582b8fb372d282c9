"""Health and information routes: ``/healthz`` (alive), ``/readyz`` (every stage answers) and
``/v1/info`` (profile, limits, models, devices, batching, the job system)."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from pipeline.errors import PoseError
from pipeline.schema import SCHEMA_VERSION
from service.api.context import ApiContext, auth_mode
from service.api.errors import error_responses
from service.auth import Client


class Health(BaseModel):
    status: str
    key_required: bool = Field(description="calls other than these health checks, /docs and /ui need a client key")


def add_health_routes(app: FastAPI, ctx: ApiContext, protected: list[Any]) -> None:
    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The ingress is alive (no auth, no call to the models); whether other calls need a key."""
        return Health(status="ok", key_required=ctx.key_required)

    @app.get("/readyz", tags=["health"], dependencies=protected, responses=error_responses("unauthorized", "not_ready"))
    async def readyz() -> dict[str, Any]:
        """Every deployment answers (each replica has loaded its model before it answers)."""
        status = await ctx.backend.readiness()
        if not all(status.values()):
            raise PoseError("not_ready", "some deployments are not ready", status=503, details={"deployments": status})
        return {"status": "ready", "deployments": status}

    @app.get("/v1/info", tags=["info"], dependencies=protected, responses=error_responses("unauthorized"))
    async def info(caller: Client = Depends(ctx.authenticate)) -> dict[str, Any]:
        """Profile, models, weight checksums, devices and batch settings (and batch statistics)."""
        return await service_info(ctx, caller)


async def service_info(ctx: ApiContext, caller: Client) -> dict[str, Any]:
    """What ``/v1/info`` answers ``caller``: admins see everything, clients `client_view` (no
    paths, nodes, processes or store address; no disk figures)."""
    settings = ctx.settings
    deployments = await ctx.backend.stages_info()
    videos = ctx.videos
    info = {
        "schema_version": SCHEMA_VERSION,
        "profile": settings.profile,
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_people": settings.max_people,
            "max_images_per_request": settings.max_images_per_request,
        },
        "load": {"images": ctx.admission.stats()},  # this Ingress replica's
        "auth": auth_mode(ctx.keys),
        "caller": {"client": caller.id, "admin": caller.admin},
        "videos": ({"error": ctx.videos_error.to_dict()["error"]} if ctx.videos_error is not None else None)
        if videos is None
        else {
            "max_active": videos.jobs.max_active,
            "max_queued": videos.jobs.max_queued,
            "retention_s": videos.jobs.retention_s,
            "video_limits": videos.jobs.video_limits.model_dump(),
            "pose_video_route": videos.media_root is not None,
            "client": await videos.usage(caller),  # the caller's own jobs and bytes, against its limits
            # the data folder's budget (service.disk): the figures of the server's disk, for admins
            "disk": await videos.disk_report() if caller.admin else None,
        },
        "resources": settings.app_info,
        "ingress": ctx.backend.host_info(),
        "deployments": deployments,
    }
    info = json.loads(json.dumps(info, default=str))  # devices, dtypes and paths as text
    return info if caller.admin else client_view(info)


# Where things are (files, folders, nodes, processes, the store's address): for operators only.
ADMIN_ONLY_KEYS = frozenset(
    {"path", "paths", "node_id", "nodes", "pid", "replica", "ingress", "job_store", "data_dir", "media_dir",
     "weights_dir", "tiny_dir", "store_error"}
)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def client_view(value: Any) -> Any:
    """``/v1/info`` as a client (not an admin) sees it: no key that says where something is, no
    text that is a path or a URL, and errors by their code only (their messages name folders)."""
    if isinstance(value, dict):
        if set(value) >= {"code", "message"}:
            return {"code": value["code"]}
        return {
            k: client_view(v) for k, v in value.items() if k not in ADMIN_ONLY_KEYS and not _locates(v)
        }
    if isinstance(value, list):
        return [client_view(v) for v in value if not _locates(v)]
    return value


def _locates(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~", "\\\\")) or bool(_URL.match(value)))
