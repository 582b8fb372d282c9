"""Job routes: list, status, result (JSON, JSON Lines, NPZ), summary, export, overlay, cancel
and delete. Every route acts for the caller's client (``caller.scope``): another client's job
answers 404 ``job_not_found``, as a missing one."""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse, Response

from pipeline.export import FORMATS as EXPORT_FORMATS
from pipeline.schema import VideoResult
from service.api.context import ApiContext
from service.api.errors import error_responses
from service.api.schemas import JOB_CODES, JOBS_OFF, RESULT_CODES, JobList, JobStatus, ResultSummary
from service.auth import Client
from service.jobs import MAX_OFFSET


def add_job_routes(app: FastAPI, ctx: ApiContext, protected: list[Any]) -> None:
    """The routes of ``/v1/jobs``."""
    caller_dep = Depends(ctx.authenticate)  # the same dependency as ``protected``: run once a request

    @app.get("/v1/jobs", response_model=JobList, tags=["videos"], dependencies=protected, responses=error_responses("unauthorized", "request_invalid", "paging_invalid", "state_invalid", *JOBS_OFF))
    async def list_jobs(
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(50, ge=1, le=1000),
        state: Optional[Literal["queued", "running", "succeeded", "failed", "cancelled"]] = Query(None),
        caller: Client = caller_dep,
    ) -> JobList:
        """The caller's jobs (an admin key: every client's), newest first, a page at a time."""
        v = ctx.video_jobs()
        page, total = await v.call(v.store.list, offset, limit, state, caller.scope)
        return JobList(jobs=[JobStatus.of(j) for j in page], total=total, offset=offset, limit=limit)

    @app.get(
        "/v1/jobs/{job_id}", response_model=JobStatus, tags=["videos"], dependencies=protected,
        responses=error_responses(*JOB_CODES), operation_id="getJob",
    )
    async def job_status(job_id: str, caller: Client = caller_dep) -> JobStatus:
        """State, progress (frames done / total), stage timings, and the error of a failed job."""
        v = ctx.video_jobs()
        return JobStatus.of(await v.call(v.store.get, job_id, caller.scope))

    @app.get(
        "/v1/jobs/{job_id}/result",
        operation_id="getJobResult",
        response_model=VideoResult,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*RESULT_CODES, "vertices_not_computed"),
            200: {
                "content": {
                    "application/octet-stream": {"description": "format=npz: see pipeline.video.npz"},
                    "application/jsonl": {"description": "format=jsonl: one Frame object a line"},
                }
            },
        },
    )
    async def job_result(
        job_id: str,
        format: Literal["json", "jsonl", "npz"] = Query(
            "json", description="json: the VideoResult document; jsonl: one frame a line; npz: flat arrays"
        ),
        vertices: bool = Query(False, description="npz with vertices (only for jobs submitted with vertices=true)"),
        caller: Client = caller_dep,
    ) -> Response:
        """The result of a succeeded job: the versioned `VideoResult` document, or NPZ arrays."""
        v = ctx.video_jobs()
        return await v.result_response(await v.call(v.store.get, job_id, caller.scope), format, vertices)

    @app.get(
        "/v1/jobs/{job_id}/summary", response_model=ResultSummary, tags=["videos"], dependencies=protected,
        operation_id="getJobSummary",
        responses=error_responses(*RESULT_CODES),
    )
    async def job_summary(job_id: str, caller: Client = caller_dep) -> ResultSummary:
        """The result of a succeeded job without its frames: video, tracks (first/last frame,
        frames seen) and models; small whatever the video's length."""
        v = ctx.video_jobs()
        return await v.summary(await v.call(v.store.get, job_id, caller.scope))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        operation_id="cancelJob",
        response_model=JobStatus,
        tags=["videos"],
        dependencies=protected,
        responses={**error_responses(*JOB_CODES, "job_state_conflict"), 202: {"model": JobStatus, "description": "running: it stops at its next chunk"}},
    )
    async def cancel_job(job_id: str, caller: Client = caller_dep) -> JSONResponse:
        """Cancel the job and keep it (its state becomes ``cancelled``); DELETE also removes it.
        A job that already ended is a 409 ``job_state_conflict``."""
        v = ctx.video_jobs()
        job = await v.cancel(job_id, caller)
        status = 202 if job.state == "running" else 200
        return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=status)

    @app.get(
        "/v1/jobs/{job_id}/export",
        operation_id="exportJob",
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*RESULT_CODES, "export_format_unknown", "track_not_found", "no_tracks", "smpl_missing"),
            200: {
                "content": {
                    "application/zip": {"description": "every track, one file each (amass, bvh, glb without track); obj: track-<id>/frame-<frame>.obj meshes"},
                    "model/gltf-binary": {"description": "format=glb: skinned SMPL mesh + the track's animation"},
                    "text/plain": {"description": "format=bvh (one track) or mot (MOTChallenge lines)"},
                    "application/octet-stream": {"description": "format=amass: AMASS-style NPZ of one track; phalp: PHALP's results pickle (joblib)"},
                }
            },
        },
    )
    async def export_job(
        job_id: str,
        format: str = Query(
            ..., description="amass (SMPL NPZ), bvh, glb (skinned mesh + animation), mot (MOTChallenge text), "
            "obj (a zip of one mesh per track and frame) or phalp (PHALP's results pickle, all tracks in one file)",
            json_schema_extra={"enum": sorted(EXPORT_FORMATS)},  # others: 422 export_format_unknown
        ),
        track: Optional[int] = Query(None, description="one track id; without it every track (a zip; mot, phalp: one file; obj: always a zip)"),
        include_unconfirmed: bool = Query(False, description="also detections never confirmed as a track (negative ids)"),
        caller: Client = caller_dep,
    ) -> Response:
        """A succeeded job's tracked people for animation and tracking tools (units and axes: docs/exports.md)."""
        v = ctx.video_jobs()
        job = await v.call(v.store.get, job_id, caller.scope)
        return await v.export_response(job, format, track, include_unconfirmed)

    @app.get(
        "/v1/jobs/{job_id}/overlay.mp4",
        operation_id="getJobOverlay",
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(
                *RESULT_CODES, "overlay_not_requested", "overlay_pending", "render_failed", "renderer_unavailable",
                "range_invalid", "range_not_satisfiable",
            ),
            200: {"content": {"video/mp4": {}}, "description": "the overlay video (H.264); Range requests answer 206"},
            206: {"description": "the byte range asked for (Content-Range)"},
        },
    )
    async def job_overlay(job_id: str, caller: Client = caller_dep) -> Response:
        """The meshes drawn over the video (jobs submitted with ``render=true``), seekable: byte
        ranges (``Range: bytes=a-b``) answer 206 Partial Content. Drawn after the job succeeds:
        409 ``overlay_pending`` until the job's ``overlay.state`` is ready; a failed overlay
        answers its own code."""
        v = ctx.video_jobs()
        return v.overlay_response(await v.call(v.store.get, job_id, caller.scope))

    @app.delete(
        "/v1/jobs/{job_id}",
        operation_id="deleteJob",
        status_code=204,
        tags=["videos"],
        dependencies=protected,
        responses={**error_responses(*JOB_CODES), 202: {"model": JobStatus, "description": "still stopping; deleted when it stops"}},
    )
    async def delete_job(job_id: str, caller: Client = caller_dep) -> Response:
        """Cancel the job (a running one stops at its next chunk) and delete it with its files."""
        v = ctx.video_jobs()
        job = await v.cancel_and_delete(job_id, caller)
        if job is None:
            return Response(status_code=204)
        return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=202)
