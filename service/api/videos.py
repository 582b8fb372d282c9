"""Video routes: ``POST /v1/videos`` (an upload becomes a job: 202) and the drop-in
``POST /pose/video`` (a file of the media folder, answered with the result when it is ready)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Optional

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from pipeline.errors import PoseError, status_of
from pipeline.schema import VideoResult
from pipeline.video.frame_range import FrameRange
from pipeline.weights import sha256_of
from service.api.context import ApiContext
from service.api.errors import error_responses
from service.api.schemas import ACCEPT_CODES, JOB_FAILURES, JOB_LINKS, RANGE_DESCRIPTIONS, JobStatus, VideoPathRequest
from service.api.uploads import MULTIPART_SLACK, form_flag, stream_upload
from service.api.video_jobs import range_field, render_field, request_fingerprint
from service.auth import Client
from service.jobs import Job, check_replay
from service.paths import resolve_media_path

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {"type": "string", "format": "binary", "description": "MP4/MOV, Matroska/WebM or AVI"},
                        "vertices": {"type": "boolean", "description": "keep the 6890 SMPL vertices per person"},
                        "render": {"type": "boolean", "description": "also render the overlay video (overlay.mp4)"},
                        "callback_url": {"type": "string", "description": "POSTed the job status when it ends"},
                        "start_frame": {"type": "integer", "description": RANGE_DESCRIPTIONS["start_frame"]},
                        "end_frame": {"type": "integer", "description": RANGE_DESCRIPTIONS["end_frame"]},
                        "start_s": {"type": "number", "description": RANGE_DESCRIPTIONS["start_s"]},
                        "end_s": {"type": "number", "description": RANGE_DESCRIPTIONS["end_s"]},
                    },
                }
            },
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def accepted(job: Job, replayed: bool) -> JSONResponse:
    """202 with the job's status and where to poll it."""
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=202, headers=headers)


def add_upload_route(app: FastAPI, ctx: ApiContext, protected: list[Any]) -> None:
    """``POST /v1/videos``: the caller's upload, streamed to disk and probed, becomes a job."""
    caller_dep = Depends(ctx.authenticate)  # the same dependency as ``protected``: run once a request

    @app.post(
        "/v1/videos",
        status_code=202,
        response_model=JobStatus,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*ACCEPT_CODES, "request_too_large", "unsupported_media_type", "multipart_invalid", "video_missing"),
            202: {"links": JOB_LINKS},
        },
        openapi_extra=_UPLOAD_BODY,
    )
    async def upload_video(
        request: Request,
        vertices: bool = Query(False, description="keep the 6890 SMPL vertices per person (large results)"),
        render: bool = Query(False, description="also render the meshes over the video: GET /v1/jobs/{id}/overlay.mp4"),
        callback_url: Optional[str] = Query(None, description="POSTed the job status when the job ends"),
        start_frame: Optional[int] = Query(None, description=RANGE_DESCRIPTIONS["start_frame"]),
        end_frame: Optional[int] = Query(None, description=RANGE_DESCRIPTIONS["end_frame"]),
        start_s: Optional[float] = Query(None, description=RANGE_DESCRIPTIONS["start_s"]),
        end_s: Optional[float] = Query(None, description=RANGE_DESCRIPTIONS["end_s"]),
        idempotency_key: Optional[str] = Header(
            None, description="a retried upload with the same key (from the same client) returns the same job"
        ),
        caller: Client = caller_dep,
    ) -> JSONResponse:
        """Upload a video (multipart field ``video``, or the raw bytes) -> 202 with the job; poll ``links.self``.

        A frame range (query parameters or form fields) processes part of the video; result frame
        indices and times stay the whole video's."""
        v = ctx.video_jobs()
        asked = {"start_frame": start_frame, "end_frame": end_frame, "start_s": start_s, "end_s": end_s}
        FrameRange.of(**asked)  # a bad range in the query is refused before the upload is read
        declared = request.headers.get("content-length", "")
        if idempotency_key is None:
            await v.check_capacity(caller, int(declared) if declared.isdigit() else 0)
        # With a key the body is read even when the key is known: a replay must be the same request.
        client_room = await v.client_room(caller)
        hold_id, hold = v.upload_hold()
        dest = v.store.new_upload_path(".upload")
        try:
            fields = await stream_upload(request, dest, v.limits.max_bytes + MULTIPART_SLACK, hold=hold, client=client_room)
            vertices = vertices or form_flag(fields.get("vertices"), "vertices")
            render = render or form_flag(fields.get("render"), "render")
            callback_url = callback_url or fields.get("callback_url") or None
            frame_range = FrameRange.of(**{k: fields.get(k) if q is None else q for k, q in asked.items()})
            fingerprint = None
            if idempotency_key is not None:
                digest = await v.call(sha256_of, dest)
                fingerprint = request_fingerprint(
                    video=digest, vertices=vertices, callback_url=callback_url, **render_field(render), **range_field(frame_range)
                )
                existing = await v.call(v.store.find_by_idempotency_key, idempotency_key, caller.id)
                if existing is not None:
                    dest.unlink()
                    await v.end_hold(hold_id)
                    return accepted(check_replay(existing, fingerprint), True)
            job = await v.accept(
                dest,
                move=True,
                options={"vertices": vertices, "render": render, "source": "upload"},
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                client=caller,
                fingerprint=fingerprint,
                frame_range=frame_range,
                upload_hold=hold_id,  # ended in the transaction that creates the job
            )
        except BaseException:  # refused: nothing it sent stays on disk, nothing stays held
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            await asyncio.shield(v.end_hold(hold_id))
            raise
        return accepted(job, False)


def add_media_route(app: FastAPI, ctx: ApiContext, protected: list[Any]) -> None:
    """``POST /pose/video``: the call the replaced ``track.py`` wrapper received."""
    caller_dep = Depends(ctx.authenticate)

    @app.post(
        "/pose/video",
        response_model=VideoResult,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(
                *ACCEPT_CODES, "request_too_large", "request_malformed", "path_invalid", "path_not_a_file", "path_not_found",
                "path_outside_media_root", "media_dir_not_configured", *JOB_FAILURES,
            ),
            202: {"model": JobStatus, "description": "not done within sync_timeout_s: poll the job"},
        },
    )
    async def pose_video(
        body: VideoPathRequest,
        idempotency_key: Optional[str] = Header(None),
        caller: Client = caller_dep,
    ) -> Response:
        """Drop-in for the old ``track.py`` wrapper: a video already in the media folder -> the result JSON.

        ``start_frame``/``end_frame`` or ``start_s``/``end_s``: only that part of the video (as
        ``track.py``'s ``video.start_frame``/``video.end_frame``: start inclusive, end exclusive).

        Answers when the job ends; past ``sync_timeout_s`` it answers 202 with the job to poll.
        """
        v = ctx.video_jobs()
        if v.media_root is None:
            raise PoseError("media_dir_not_configured", "POST /pose/video needs the media_dir setting", status=404)
        frame_range = FrameRange.of(body.start_frame, body.end_frame, body.start_s, body.end_s)
        path = await v.call(resolve_media_path, body.video_path, v.media_root)
        job = fingerprint = None
        if idempotency_key is not None:
            fingerprint = request_fingerprint(
                video_path=str(path), vertices=body.vertices, callback_url=body.callback_url, **render_field(body.render),
                **range_field(frame_range),
            )
            job = await v.call(v.store.find_by_idempotency_key, idempotency_key, caller.id)
            if job is not None:
                check_replay(job, fingerprint)
        if job is None:
            await v.check_capacity(caller)  # the input stays in the media folder; its results are reserved at `accept`
            job = await v.accept(
                path,
                move=False,
                options={"vertices": body.vertices, "render": body.render, "source": "media_dir"},
                idempotency_key=idempotency_key,
                callback_url=body.callback_url,
                client=caller,
                fingerprint=fingerprint,
                frame_range=frame_range,
            )
        job = await v.wait(job.id, v.api.sync_timeout_s)
        if job.state == "succeeded":
            return await v.result_response(job, "json", False)
        if job.state in ("failed", "cancelled"):
            err = job.error
            code = err.code if err else "job_" + job.state
            # the store keeps a failed job's code; the table gives its status
            raise PoseError(code, err.message if err else f"the job ended {job.state}", status=status_of(code),
                            details={"job_id": job.id})
        return accepted(job, False)
