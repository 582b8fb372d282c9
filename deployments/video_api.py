"""Video jobs over HTTP: upload, status, result, cancel, list, and the drop-in ``/pose/video`` route.

The Ingress accepts a video only once it is safely on disk and known to be a video: the upload
is streamed to a file in the job store's uploads folder (the size limit enforced while
streaming, never the whole body in memory), probed by `pipeline.video.probe_video` (content,
not file name), and only then is a job created, so a bad upload is a 4xx at once and a 202
means the job survives any restart. The `VideoPipeline` deployment runs the job; this side only
reads the store (status, results) and nudges the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from pipeline.auth import Client
from pipeline.callbacks import check_url
from pipeline.disk import DiskBudget
from pipeline.errors import InputError, PoseError, status_of
from pipeline.export import FORMATS as EXPORT_FORMATS
from pipeline.jobs import MAX_OFFSET, Job, JobStore, check_replay
from pipeline.schema import SCHEMA_VERSION, TrackSummary, VideoMeta, VideoResult
from pipeline.weights import sha256_of

from .common import ModelSettings, error_responses

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from .ingress import Ingress
    from .video import JobSettings

logger = logging.getLogger(__name__)

RAW_VIDEO_TYPES = {
    "video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "video/x-msvideo", "video/avi",
    "application/octet-stream",
}
_FORM_FIELD_BYTES = 4096  # a text field of the upload form (options, callback URL)
_MULTIPART_SLACK = 64 * 1024  # multipart framing and text fields on top of the video's own limit


# -- HTTP bodies ---------------------------------------------------------------------------------


class JobProgress(BaseModel):
    frames_done: int = Field(description="frames decoded, run through the models and tracked")
    frames_total: Optional[int] = Field(default=None, description="frames in the video, once known")
    fraction: Optional[float] = Field(default=None, description="frames_done / frames_total")
    resumed_from_frame: Optional[int] = Field(
        default=None, description="where the running attempt resumed from its checkpoint (0: from the start)"
    )


class JobErrorInfo(BaseModel):
    code: str = Field(description="stable, machine-readable (e.g. video_corrupt, interrupted, cancelled)")
    message: str


class JobStatus(BaseModel):
    """One job as a caller sees it (no server paths)."""

    id: str
    client: str = Field(description="the client whose key created the job; only it and admin keys see the job")
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: float = Field(description="unix seconds")
    updated_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    progress: JobProgress
    timings: dict[str, float] = Field(description="seconds per stage so far: decode_s, models_s (waiting for detector and regressor), appearance_s, tracking_s, write_s, total_s")
    error: Optional[JobErrorInfo] = None
    options: dict[str, Any]
    idempotency_key: Optional[str] = None
    callback_url: Optional[str] = None
    attempts: int = Field(description="times a worker started the job (restarts included)")
    cancel_requested: bool
    results: list[str] = Field(description="result formats available: json, jsonl, npz, and overlay (the MP4 of jobs with render=true)")
    links: dict[str, str] = Field(description="status, result and overlay URLs")

    @classmethod
    def of(cls, job: Job) -> "JobStatus":
        links = {"self": f"/v1/jobs/{job.id}"}
        if job.state == "succeeded":
            links["result"] = f"/v1/jobs/{job.id}/result"
            if "overlay" in job.result_paths:
                links["overlay"] = f"/v1/jobs/{job.id}/overlay.mp4"
        return cls(**{**job.to_dict(), "results": result_formats(job)}, links=links)


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int = Field(description="jobs matching the filter, all pages")
    offset: int
    limit: int


class ResultSummary(BaseModel):
    """A succeeded job's result without its frames: what a page or a dashboard shows first."""

    schema_version: str = SCHEMA_VERSION
    video: VideoMeta
    tracks: list[TrackSummary]
    models: dict[str, str] = Field(default_factory=dict)


class VideoPathRequest(BaseModel):
    """The body of ``POST /pose/video`` (the call the replaced ``track.py`` wrapper received)."""

    model_config = ConfigDict(extra="forbid")

    video_path: str = Field(
        max_length=4096, json_schema_extra={"minLength": 1},  # "" is refused as path_invalid
        description="a file inside the configured media folder (relative, or absolute inside it)",
    )
    vertices: bool = Field(default=False, description="also keep the 6890 SMPL vertices per person and frame (in the NPZ result)")
    render: bool = Field(default=False, description="also render the overlay video (GET /v1/jobs/{id}/overlay.mp4)")
    callback_url: Optional[str] = Field(default=None, max_length=2048)


class VideoApiSettings(BaseModel):
    """What the Ingress needs for video jobs (the worker's settings live in `JobSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    media_dir: Optional[str] = None  # POST /pose/video reads files from here only; None: route disabled
    sync_timeout_s: float = 300.0  # POST /pose/video waits this long, then answers 202 with the job
    allow_callbacks: bool = True  # accept callback_url (the worker POSTs to it when a job ends)
    # Where exports (BVH, GLB, AMASS) find the SMPL model: the model replicas' own cache settings,
    # read on the Ingress's node (the tiny profile writes its tiny SMPL there). None: those exports off.
    models: Optional[ModelSettings] = None


# -- the service side ----------------------------------------------------------------------------


class VideoJobs:
    """The Ingress's view of video jobs: the store (read, create, cancel) and the worker's handle."""

    def __init__(self, pipeline: "DeploymentHandle", jobs: "JobSettings", api: VideoApiSettings) -> None:
        self.pipeline = pipeline
        self.jobs = jobs
        self.api = api
        self.limits = jobs.video_limits.limits()
        self.store: JobStore = jobs.open_store()
        self.disk = DiskBudget(self.store.data_dir, jobs.max_disk_bytes, jobs.min_free_disk_bytes)
        self.media_root = Path(api.media_dir).expanduser() if api.media_dir else None
        self._body: Any = None  # the SMPL rig exports use, read on the first export that needs it

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Store calls are short but synchronous (SQLite, fsync): off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _nudge(self) -> None:
        """Tell the worker a job is queued (best effort: it also polls the store)."""
        try:
            self.pipeline.wake.remote()
        except Exception as exc:  # the worker restarting: it will find the job when it is back
            logger.warning("could not wake the video worker: %s", exc)

    async def check_capacity(self) -> None:
        """Refuse before reading a large upload when the queue is already full (the store checks
        again, atomically, when the job is created)."""
        counts = await self.call(self._counts)
        if self.store.queue_full(counts["queued"], counts["running"]):
            raise PoseError(
                "too_many_jobs",
                f"expected at most {self.jobs.max_active} running and {self.jobs.max_queued} queued jobs, "
                f"got {counts['running']} running and {counts['queued']} queued; retry later",
                status=429,
                details={
                    "retry_after": 5,
                    **counts,
                    "max_active": self.jobs.max_active,
                    "max_queued": self.jobs.max_queued,
                },
            )

    def _counts(self) -> dict[str, int]:
        counts = self.store.counts()
        return {s: counts.get(s, 0) for s in ("queued", "running")}

    async def accept(
        self,
        path: Path,
        *,
        move: bool,
        options: dict[str, Any],
        idempotency_key: str | None,
        callback_url: str | None,
        client: Client,
        fingerprint: str | None = None,
    ) -> Job:
        """Probe the video (a bad one is refused here, as a 4xx), then queue a job for it, ``client``'s.

        An upload (``move``) that is refused for any reason is deleted at once: nothing a
        refused request sent stays on disk."""
        try:
            if callback_url is not None:
                if not self.api.allow_callbacks:
                    raise InputError("callbacks_disabled", "this service does not call callback URLs (allow_callbacks: false)")
                await self.call(check_url, callback_url, self.jobs.callback_policy())
            info = await self.call(_probe, path, self.limits)
            job = await self.call(
                self.store.create,
                "video",
                input_file=path,
                move_input=move,
                options={**options, "frames_expected": info.frame_count},
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                fingerprint=fingerprint,
                client=client.id,
            )
        except BaseException:
            if move:  # once accepted the upload has moved into the job's folder
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
        self._nudge()
        return job

    async def cancel_and_delete(self, job_id: str, client: Client, wait_s: float = 10.0) -> Job | None:
        """Cancel (a running job stops at its next chunk) and delete a job ``client`` may see;
        None once deleted, else the job still stopping (it is deleted by the worker when it stops)."""
        job = await self.call(self.store.get, job_id, client.scope)
        if job.state in ("queued", "running"):
            job = await self.call(self.store.cancel, job_id, client.scope)
        if job.state != "running":
            await self.call(self.store.delete, job_id, client.scope)
            return None
        await self.pipeline.cancel.remote(job_id, True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            try:
                job = await self.call(self.store.get, job_id)
            except PoseError as exc:
                if exc.code == "job_not_found":
                    return None
                raise
            if job.state != "running":
                with contextlib.suppress(PoseError):
                    await self.call(self.store.delete, job_id)
                return None
        return job

    async def cancel(self, job_id: str, client: Client) -> Job:
        """Cancel and keep the job: a queued one at once, a running one at its next chunk
        (``cancel_requested`` until then); a finished one is a 409 with its state."""
        return await self.call(self.store.cancel, job_id, client.scope)

    async def summary(self, job: Job) -> ResultSummary:
        require_succeeded(job)
        meta = job.result_paths.get("meta")
        if meta is None or not meta.is_file():
            raise PoseError("result_missing", f"the result of job {job.id} is not on disk", status=500)
        return ResultSummary.model_validate_json(await self.call(meta.read_bytes))

    async def wait(self, job_id: str, timeout_s: float) -> Job:
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            job = await self.call(self.store.get, job_id)
            if job.state in ("succeeded", "failed", "cancelled") or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(1.0, delay * 1.5)

    async def result_response(self, job: Job, fmt: str, vertices: bool) -> Response:
        """The result of a finished job, streamed from its files: the JSON document, JSON Lines
        (one frame a line) or NPZ. Vertices are in the NPZ only (a long video's mesh as JSON
        would be tens of GB)."""
        from pipeline.result_stream import iter_json_document

        require_succeeded(job)
        has_vertices = bool(job.options.get("vertices", False))
        if vertices and not has_vertices:
            raise InputError(
                "vertices_not_computed",
                "this job was submitted without vertices=true, so its result has none; submit it again with vertices",
                status=409,
            )
        if vertices and fmt != "npz":
            raise InputError(
                "vertices_npz_only", "vertices are served in the binary form only: ask for format=npz&vertices=true"
            )
        names = ("npz_vertices",) if fmt == "npz" and vertices else ("npz",) if fmt == "npz" else ("jsonl", "meta")
        paths = [job.result_paths.get(n) for n in names]
        if any(p is None or not p.is_file() for p in paths):
            raise PoseError("result_missing", f"the {fmt} result of job {job.id} is not on disk", status=500)
        if fmt == "npz":
            return FileResponse(paths[0], media_type="application/octet-stream", headers=_attachment(f"{job.id}.npz"))
        if fmt == "jsonl":
            return FileResponse(paths[0], media_type="application/jsonl")
        return StreamingResponse(iter_json_document(paths[0], paths[1]), media_type="application/json")


    def export_body(self) -> Any:
        """The SMPL rig for exports, from the configured caches (`smpl_missing` if absent there)."""
        if self._body is None:
            from pipeline.export.body import find_smpl, load_body

            if self.api.models is None:
                raise PoseError("smpl_missing", "this deployment has no model caches configured for exports", status=503)
            self._body = load_body(find_smpl(self.api.models.roots()))
        return self._body

    async def export_response(self, job: Job, fmt: str, track: int | None, include_unconfirmed: bool) -> Response:
        """A finished job's tracks in an export format (`pipeline.export`), as an attachment: one
        file for one track or MOT, else a zip of one file per track."""
        from pipeline.export import FORMATS, ResultFiles, check_format, export_to, needs_body

        check_format(fmt)
        require_succeeded(job)
        jsonl, meta = job.result_paths.get("jsonl"), job.result_paths.get("meta")
        if jsonl is None or meta is None or not jsonl.is_file() or not meta.is_file():
            raise PoseError("result_missing", f"the result of job {job.id} is not on disk", status=500)
        body = await self.call(self.export_body) if needs_body(fmt) else None
        folder = Path(tempfile.mkdtemp(prefix="pose-export-"))
        try:
            out = folder / "export"
            names = await self.call(
                export_to, ResultFiles(jsonl, meta), fmt, out, track, body=body, include_unconfirmed=include_unconfirmed
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if track is not None or fmt == "mot":
            filename, media = f"{job.id}-{names[0]}", FORMATS[fmt][1]
        else:
            filename, media = f"{job.id}-{fmt}.zip", "application/zip"
        return FileResponse(
            out,
            media_type=media,
            headers=_attachment(filename),
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    def overlay_response(self, job: Job) -> Response:
        """The overlay MP4 of a finished job that asked for it, with byte ranges (a browser
        ``<video>`` seeks with them)."""
        if not job.options.get("render"):
            raise PoseError(
                "overlay_not_requested",
                "this job was submitted without render=true, so it has no overlay video; submit it again with render",
                status=404,
            )
        require_succeeded(job)
        path = job.result_paths.get("overlay")
        if path is None or not path.is_file():
            raise PoseError("result_missing", f"the overlay video of job {job.id} is not on disk", status=500)
        return ranged_file_response(path, "video/mp4")


def require_succeeded(job: Job) -> None:
    """A job without a result yet (or that will never have one) is a 409 with its state."""
    if job.state != "succeeded":
        raise PoseError(
            "job_not_finished" if job.state in ("queued", "running") else "job_" + job.state,
            f"expected a succeeded job, got one that is {job.state}",
            status=409,
            details={"state": job.state, **({"error": job.error.__dict__} if job.error else {})},
        )


def result_formats(job: Job) -> list[str]:
    """The formats a succeeded job's result can be fetched in."""
    have = set(job.result_paths)
    out = []
    if {"jsonl", "meta"} <= have:
        out += ["json", "jsonl"]
    if "npz" in have:
        out.append("npz")
    if "overlay" in have:
        out.append("overlay")
    return out


def _probe(path: Path, limits: Any) -> Any:
    from pipeline.video import probe_video

    return probe_video(path, limits)


def _attachment(filename: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{filename}"'}


class _RangedFile(FileResponse):
    """Starlette's `FileResponse` (which answers ``Range`` requests: 206 with ``Content-Range``,
    multipart byte ranges, ``If-Range``) with its two refusals as our JSON errors: 416
    ``range_not_satisfiable`` (keeping ``Content-Range: bytes */size``) and 400 ``range_invalid``."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        refused: dict[str, Any] = {}

        async def relay(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                refused.update(message)
                return
            if refused:  # the refusal's own plain-text body
                return
            await send(message)

        await super().__call__(scope, receive, relay)
        if refused:
            status = refused["status"]
            headers = {k.decode(): v.decode() for k, v in refused.get("headers", []) if k.lower() == b"content-range"}
            if status == 416:
                err = PoseError("range_not_satisfiable", f"the range {_range_of(scope)!r} starts past the end of the file", status=416)
            else:
                err = PoseError("range_invalid", f"expected a byte range such as bytes=0-1023, got {_range_of(scope)!r}", status=400)
            await JSONResponse(err.to_dict(), status_code=status, headers=headers)(scope, receive, send)


def _range_of(scope: Any) -> str:
    return dict(scope.get("headers") or []).get(b"range", b"").decode("latin-1")[:100]


def ranged_file_response(path: Path, media_type: str) -> Response:
    """A file served with byte ranges, so a browser ``<video>`` can seek in it."""
    return _RangedFile(path, media_type=media_type)


# -- streaming uploads ---------------------------------------------------------------------------


class _FormSink:
    """python-multipart callbacks: the one file part goes to disk, text fields are kept (small)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.file: Any = None
        self.got_file = False
        self.fields: dict[str, str] = {}
        self.error: PoseError | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._name: str | None = None
        self._is_file = False
        self._text = bytearray()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "_field"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "_value"),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, data: bytes, start: int, end: int, attr: str) -> None:
        setattr(self, attr, getattr(self, attr) + data[start:end])

    def _part_begin(self) -> None:
        self._headers, self._name, self._is_file, self._text = {}, None, False, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in params or self._name == "video"
        if self._is_file:
            if self.got_file or self._name != "video":
                self.error = InputError(
                    "multipart_invalid", f"expected one file, in the field 'video', got a file in {self._name!r}"
                )
                return
            self.got_file = True
            self.file = open(self.dest, "wb")  # noqa: SIM115 - closed by close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._is_file:
            self.file.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > _FORM_FIELD_BYTES:
            self.error = InputError("multipart_invalid", f"form field {self._name!r} is over {_FORM_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._is_file:
            self.close()
        elif self._name and self.error is None:
            self.fields[self._name] = self._text.decode("utf-8", "replace")


async def stream_upload(request: Request, dest: Path, limit: int, disk: DiskBudget | None = None) -> dict[str, str]:
    """The video of a multipart (field ``video``) or raw request body, streamed to ``dest``;
    returns the text fields. Raises 413 past ``limit`` bytes, 507 ``storage_full`` past the room
    ``disk`` leaves (before writing past it), 415 for other content types."""
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    if kind != "multipart/form-data" and kind not in RAW_VIDEO_TYPES:
        raise PoseError(
            "unsupported_media_type",
            f"expected multipart/form-data (field 'video') or a raw video body (video/mp4, ..., "
            f"application/octet-stream), got {kind or 'no content type'!r}",
            status=415,
        )
    declared = request.headers.get("content-length")
    declared_size = int(declared) if declared is not None and declared.isdigit() else None
    if declared_size is not None and declared_size > limit:
        raise _too_large(declared_size, limit)
    room = None
    if disk is not None:
        room = await asyncio.to_thread(disk.room)
        disk.check(declared_size or 0, room)
    received = charged = 0

    def count(chunk: bytes) -> None:
        nonlocal received, charged
        received += len(chunk)
        if received > limit:
            raise _too_large(received, limit)
        if disk is not None and room is not None:
            if received > room:
                raise disk.full(received, room)
            disk.charge(len(chunk))  # seen at once by uploads that start meanwhile
            charged += len(chunk)

    try:
        if kind != "multipart/form-data":
            with open(dest, "wb") as f:
                async for chunk in request.stream():
                    count(chunk)
                    f.write(chunk)
            return {}
        return await _stream_multipart(request, ctype, dest, count)
    except BaseException:
        if disk is not None:  # the caller deletes a refused upload: its bytes are free again
            disk.charge(-charged)
        raise


async def _stream_multipart(request: Request, ctype: str, dest: Path, count: Any) -> dict[str, str]:
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("multipart_invalid", "multipart/form-data without a boundary")
    sink = _FormSink(dest)
    try:
        parser = MultipartParser(boundary, sink.callbacks())
        async for chunk in request.stream():
            count(chunk)
            parser.write(chunk)
            if sink.error is not None:
                raise sink.error
        parser.finalize()
    except PoseError:
        raise
    except Exception as exc:  # the parser's errors have no common base class
        raise InputError("multipart_invalid", f"the multipart body cannot be parsed: {exc}") from exc
    finally:
        sink.close()
    if not sink.got_file:
        raise InputError("video_missing", "expected the video as a file in the multipart field 'video'")
    return sink.fields


def request_fingerprint(**fields: Any) -> str:
    """sha256 of what a request asked for (the video's own digest or path, and its options):
    what an idempotent replay must repeat."""
    doc = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def _render_field(render: bool) -> dict[str, bool]:
    """``render`` in a request's fingerprint only when asked, so that requests made before the
    option existed keep their fingerprints."""
    return {"render": True} if render else {}


def _too_large(size: int, limit: int) -> PoseError:
    return PoseError(
        "request_too_large",
        f"the request body is {size} bytes or more, the limit is {limit} bytes",
        status=413,
        details={"max_bytes": limit},
    )


def _flag(value: str | bool | None, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise InputError("request_invalid", f"{name}: expected true or false, got {value!r}", status=422)


# -- routes --------------------------------------------------------------------------------------

# What the video routes can answer besides success (the table: pipeline.errors.CODES).
_JOBS_OFF = ("videos_unavailable", "data_dir_unavailable", "job_store_unavailable")
_JOB = ("unauthorized", "request_invalid", "job_not_found", *_JOBS_OFF)
_RESULT = (*_JOB, "job_not_finished", "job_failed", "job_cancelled", "result_missing")
_ACCEPT = (
    "unauthorized", "request_invalid", "video_corrupt", "video_empty", "video_unreadable", "video_unsupported_format",
    "video_no_video_stream", "video_too_large", "video_too_long", "callback_url_invalid", "callback_url_forbidden",
    "callback_url_unresolvable", "callbacks_disabled", "idempotency_key_invalid", "idempotency_key_reused",
    "too_many_jobs", "storage_full", *_JOBS_OFF,
)
# the codes a job can end with, which POST /pose/video answers as its own
_JOB_FAILURES = ("cancelled", "interrupted", "stage_unavailable", "stage_timeout", "overloaded", "input_missing", "internal_error")

# The operations an accepted job's id leads to (OpenAPI links: clients and fuzzers follow them).
_JOB_LINKS = {
    name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
    for name, op in (
        ("status", "getJob"), ("result", "getJobResult"), ("summary", "getJobSummary"), ("export", "exportJob"),
        ("overlay", "getJobOverlay"), ("cancel", "cancelJob"), ("delete", "deleteJob"),
    )
}

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
                    },
                }
            },
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def add_video_routes(app: FastAPI, service: "Ingress", protected: list[Any]) -> None:
    """The video routes on the Ingress's FastAPI app. Every job route acts for the caller's
    client (``caller.scope``): another client's job answers 404 ``job_not_found``, as a missing one."""
    caller_dep = Depends(service.authenticate)  # the same dependency as ``protected``: run once a request

    def jobs() -> VideoJobs:
        videos = service.open_videos()
        if videos is None and service.videos_error is not None:
            raise service.videos_error
        if videos is None:
            raise PoseError(
                "videos_unavailable", "video jobs are not enabled in this deployment (no tracker or no data folder)",
                status=503,
            )
        return videos

    def accepted(job: Job, replayed: bool) -> JSONResponse:
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=202, headers=headers)

    @app.post(
        "/v1/videos",
        status_code=202,
        response_model=JobStatus,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*_ACCEPT, "request_too_large", "unsupported_media_type", "multipart_invalid", "video_missing"),
            202: {"links": _JOB_LINKS},
        },
        openapi_extra=_UPLOAD_BODY,
    )
    async def upload_video(
        request: Request,
        vertices: bool = Query(False, description="keep the 6890 SMPL vertices per person (large results)"),
        render: bool = Query(False, description="also render the meshes over the video: GET /v1/jobs/{id}/overlay.mp4"),
        callback_url: Optional[str] = Query(None, description="POSTed the job status when the job ends"),
        idempotency_key: Optional[str] = Header(
            None, description="a retried upload with the same key (from the same client) returns the same job"
        ),
        caller: Client = caller_dep,
    ) -> JSONResponse:
        """Upload a video (multipart field ``video``, or the raw bytes) -> 202 with the job; poll ``links.self``."""
        v = jobs()
        if idempotency_key is None:
            await v.check_capacity()
        # With a key the body is read even when the key is known: a replay must be the same request.
        dest = v.store.new_upload_path(".upload")
        try:
            fields = await stream_upload(request, dest, v.limits.max_bytes + _MULTIPART_SLACK, v.disk)
            vertices = vertices or _flag(fields.get("vertices"), "vertices")
            render = render or _flag(fields.get("render"), "render")
            callback_url = callback_url or fields.get("callback_url") or None
            fingerprint = None
            if idempotency_key is not None:
                digest = await v.call(sha256_of, dest)
                fingerprint = request_fingerprint(video=digest, vertices=vertices, callback_url=callback_url, **_render_field(render))
                existing = await v.call(v.store.find_by_idempotency_key, idempotency_key, caller.id)
                if existing is not None:
                    dest.unlink()
                    return accepted(check_replay(existing, fingerprint), True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise
        job = await v.accept(
            dest,
            move=True,
            options={"vertices": vertices, "render": render, "source": "upload"},
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            client=caller,
            fingerprint=fingerprint,
        )
        return accepted(job, False)

    @app.get("/v1/jobs", response_model=JobList, tags=["videos"], dependencies=protected, responses=error_responses("unauthorized", "request_invalid", "paging_invalid", "state_invalid", *_JOBS_OFF))
    async def list_jobs(
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
        limit: int = Query(50, ge=1, le=1000),
        state: Optional[Literal["queued", "running", "succeeded", "failed", "cancelled"]] = Query(None),
        caller: Client = caller_dep,
    ) -> JobList:
        """The caller's jobs (an admin key: every client's), newest first, a page at a time."""
        v = jobs()
        page, total = await v.call(v.store.list, offset, limit, state, caller.scope)
        return JobList(jobs=[JobStatus.of(j) for j in page], total=total, offset=offset, limit=limit)

    @app.get(
        "/v1/jobs/{job_id}", response_model=JobStatus, tags=["videos"], dependencies=protected,
        responses=error_responses(*_JOB), operation_id="getJob",
    )
    async def job_status(job_id: str, caller: Client = caller_dep) -> JobStatus:
        """State, progress (frames done / total), stage timings, and the error of a failed job."""
        v = jobs()
        return JobStatus.of(await v.call(v.store.get, job_id, caller.scope))

    @app.get(
        "/v1/jobs/{job_id}/result",
        operation_id="getJobResult",
        response_model=VideoResult,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*_RESULT, "vertices_not_computed"),
            200: {
                "content": {
                    "application/octet-stream": {"description": "format=npz: see pipeline.result_npz"},
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
        v = jobs()
        return await v.result_response(await v.call(v.store.get, job_id, caller.scope), format, vertices)

    @app.get(
        "/v1/jobs/{job_id}/summary", response_model=ResultSummary, tags=["videos"], dependencies=protected,
        operation_id="getJobSummary",
        responses=error_responses(*_RESULT),
    )
    async def job_summary(job_id: str, caller: Client = caller_dep) -> ResultSummary:
        """The result of a succeeded job without its frames: video, tracks (first/last frame,
        frames seen) and models; small whatever the video's length."""
        v = jobs()
        return await v.summary(await v.call(v.store.get, job_id, caller.scope))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        operation_id="cancelJob",
        response_model=JobStatus,
        tags=["videos"],
        dependencies=protected,
        responses={**error_responses(*_JOB, "job_state_conflict"), 202: {"model": JobStatus, "description": "running: it stops at its next chunk"}},
    )
    async def cancel_job(job_id: str, caller: Client = caller_dep) -> JSONResponse:
        """Cancel the job and keep it (its state becomes ``cancelled``); DELETE also removes it.
        A job that already ended is a 409 ``job_state_conflict``."""
        v = jobs()
        job = await v.cancel(job_id, caller)
        status = 202 if job.state == "running" else 200
        return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=status)

    @app.get(
        "/v1/jobs/{job_id}/export",
        operation_id="exportJob",
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*_RESULT, "export_format_unknown", "track_not_found", "no_tracks", "smpl_missing"),
            200: {
                "content": {
                    "application/zip": {"description": "every track, one file each (amass, bvh, glb without track)"},
                    "model/gltf-binary": {"description": "format=glb: skinned SMPL mesh + the track's animation"},
                    "text/plain": {"description": "format=bvh (one track) or mot (MOTChallenge lines)"},
                    "application/octet-stream": {"description": "format=amass: AMASS-style NPZ of one track"},
                }
            },
        },
    )
    async def export_job(
        job_id: str,
        format: str = Query(
            ..., description="amass (SMPL NPZ), bvh, glb (skinned mesh + animation) or mot (MOTChallenge text)",
            json_schema_extra={"enum": sorted(EXPORT_FORMATS)},  # others: 422 export_format_unknown
        ),
        track: Optional[int] = Query(None, description="one track id; without it every track (a zip; mot: one file)"),
        include_unconfirmed: bool = Query(False, description="also detections never confirmed as a track (negative ids)"),
        caller: Client = caller_dep,
    ) -> Response:
        """A succeeded job's tracked people for animation and tracking tools (units and axes: docs/exports.md)."""
        v = jobs()
        job = await v.call(v.store.get, job_id, caller.scope)
        return await v.export_response(job, format, track, include_unconfirmed)

    @app.get(
        "/v1/jobs/{job_id}/overlay.mp4",
        operation_id="getJobOverlay",
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(*_RESULT, "overlay_not_requested", "range_invalid", "range_not_satisfiable"),
            200: {"content": {"video/mp4": {}}, "description": "the overlay video (H.264); Range requests answer 206"},
            206: {"description": "the byte range asked for (Content-Range)"},
        },
    )
    async def job_overlay(job_id: str, caller: Client = caller_dep) -> Response:
        """The meshes drawn over the video (jobs submitted with ``render=true``), seekable: byte
        ranges (``Range: bytes=a-b``) answer 206 Partial Content."""
        v = jobs()
        return v.overlay_response(await v.call(v.store.get, job_id, caller.scope))

    @app.delete(
        "/v1/jobs/{job_id}",
        operation_id="deleteJob",
        status_code=204,
        tags=["videos"],
        dependencies=protected,
        responses={**error_responses(*_JOB), 202: {"model": JobStatus, "description": "still stopping; deleted when it stops"}},
    )
    async def delete_job(job_id: str, caller: Client = caller_dep) -> Response:
        """Cancel the job (a running one stops at its next chunk) and delete it with its files."""
        v = jobs()
        job = await v.cancel_and_delete(job_id, caller)
        if job is None:
            return Response(status_code=204)
        return JSONResponse(JobStatus.of(job).model_dump(mode="json"), status_code=202)

    @app.post(
        "/pose/video",
        response_model=VideoResult,
        tags=["videos"],
        dependencies=protected,
        responses={
            **error_responses(
                *_ACCEPT, "request_too_large", "request_malformed", "path_invalid", "path_not_a_file", "path_not_found",
                "path_outside_media_root", "media_dir_not_configured", *_JOB_FAILURES,
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

        Answers when the job ends; past ``sync_timeout_s`` it answers 202 with the job to poll.
        """
        from pipeline.paths import resolve_media_path

        v = jobs()
        if v.media_root is None:
            raise PoseError("media_dir_not_configured", "POST /pose/video needs the media_dir setting", status=404)
        path = await v.call(resolve_media_path, body.video_path, v.media_root)
        job = fingerprint = None
        if idempotency_key is not None:
            fingerprint = request_fingerprint(
                video_path=str(path), vertices=body.vertices, callback_url=body.callback_url, **_render_field(body.render)
            )
            job = await v.call(v.store.find_by_idempotency_key, idempotency_key, caller.id)
            if job is not None:
                check_replay(job, fingerprint)
        if job is None:
            await v.check_capacity()
            await v.call(v.disk.check, 0)  # the input stays in the media folder; its results need room
            job = await v.accept(
                path,
                move=False,
                options={"vertices": body.vertices, "render": body.render, "source": "media_dir"},
                idempotency_key=idempotency_key,
                callback_url=body.callback_url,
                client=caller,
                fingerprint=fingerprint,
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

