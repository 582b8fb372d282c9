"""The API's side of video jobs: accept an upload or a media file as a job, read jobs and
their results from the store, cancel and delete, and export finished ones. The workers run the
jobs; this side reads the store and nudges them through the model backend.

A video is accepted only once it is safely on disk and known to be a video: probed by
`pipeline.video.decode.probe_video` (content, not file name), and only then is a job created, so
a bad upload is a 4xx at once and a 202 means the job survives any restart."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from pipeline.errors import InputError, PoseError, status_of
from pipeline.export import FORMATS, ResultFiles, check_format, export_to, needs_body, zipped
from pipeline.export.body import find_smpl, load_body
from pipeline.video.decode import probe_video
from pipeline.video.frame_range import FrameRange
from pipeline.video.results import iter_json_document
from service.api.backend import ModelBackend
from service.api.files import attachment, ranged_file_response
from service.api.schemas import ResultSummary
from service.api.uploads import HOLD_S
from service.auth import Client
from service.callbacks import check_url
from service.disk import DiskBudget
from service.jobs import Job, JobStore
from service.jobs.usage import ClientBytes, Reservation, expected_overlay_bytes, expected_result_bytes
from service.settings import JobSettings, VideoApiSettings

logger = logging.getLogger(__name__)


class VideoJobs:
    """The API's view of video jobs: the store (read, create, cancel), results, exports, and the
    workers reached through the backend. ``nodes``: the cluster's, which a node-local store refuses."""

    def __init__(self, backend: ModelBackend, jobs: JobSettings, api: VideoApiSettings, nodes: int = 1) -> None:
        self.backend = backend
        self.jobs = jobs
        self.api = api
        self.limits = jobs.video_limits.limits()
        self.store: JobStore = jobs.open_store(nodes)
        self.disk = DiskBudget(self.store.data_dir, jobs.max_disk_bytes, jobs.min_free_disk_bytes)
        self.media_root = Path(api.media_dir).expanduser() if api.media_dir else None
        self._body: Any = None  # the SMPL rig exports use, read on the first export that needs it

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Store calls are short but synchronous (SQLite, fsync): off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _nudge(self) -> None:
        """Tell the worker a job is queued (best effort: it also polls the store)."""
        try:
            self.backend.wake_worker()
        except Exception as exc:  # the worker restarting: it will find the job when it is back
            logger.warning("could not wake the video worker: %s", exc)

    def client_limit(self, client: Client) -> int | None:
        """The jobs ``client`` may have queued or running (None: admins, bounded by the queue only)."""
        return None if client.admin else self.jobs.max_jobs_per_client

    def client_max_bytes(self, client: Client) -> int | None:
        """What ``client``'s jobs may take on disk (None: admins, bounded by the disk only)."""
        return None if client.admin else self.jobs.max_bytes_per_client

    async def check_capacity(self, client: Client, incoming_bytes: int = 0) -> None:
        """Refuse before reading a large upload (``incoming_bytes``, as declared) when the client
        is at its limit of jobs or bytes or the queue is already full (the store checks them
        again, with the disk room, atomically, when the job is created)."""
        ask = Reservation(input_bytes=incoming_bytes, client_max_bytes=self.client_max_bytes(client))
        await self.call(self.store.check_admission, client.id, self.client_limit(client), ask)

    async def client_room(self, client: Client) -> ClientBytes | None:
        """For an upload about to stream in: the client's bytes against its limit (None: none)."""
        usage = await self.call(self.store.usage, client.id)
        return usage.client_room(self.client_max_bytes(client))

    def upload_hold(self) -> tuple[str, Callable[[int], Awaitable[None]]]:
        """A new upload's hold id, and ``hold(n)``: hold the data folder's room for its ``n``
        bytes in the job store, seen by every Ingress replica (`service.jobs.usage.hold_upload`);
        507 ``storage_full`` with the folder's bounds when they do not fit."""
        hold_id = uuid.uuid4().hex

        async def hold(nbytes: int) -> None:
            room = await self.call(self.disk.room)
            try:
                await self.call(self.store.hold_upload, hold_id, nbytes, room, HOLD_S)
            except PoseError as exc:
                if exc.code == "storage_full":
                    exc.details.update(self.disk.bounds())
                raise

        return hold_id, hold

    async def disk_report(self) -> dict[str, int | None]:
        """The data folder's figures (`DiskBudget.report`) and what is promised on it and not yet
        written (``reserved_bytes``: accepted jobs' results, uploads streaming in)."""
        report = await self.call(self.disk.report)
        return {**report, "reserved_bytes": await self.call(self.store.reserved_bytes)}

    async def end_hold(self, hold_id: str) -> None:
        """An upload that became a job, or was refused, holds no room any more (best effort: a
        hold left behind lapses by itself)."""
        try:
            await self.call(self.store.end_upload_hold, hold_id)
        except Exception as exc:  # the store away: the hold runs out
            logger.warning("upload hold %s not ended (it lapses by itself): %s", hold_id, exc)

    async def usage(self, client: Client) -> dict[str, int | None]:
        """The caller's own jobs and bytes against its limits (``/v1/info``)."""
        usage = await self.call(self.store.usage, client.id)
        return {
            "jobs": usage.client_jobs, "max_jobs": self.client_limit(client),
            "disk_bytes": usage.client_bytes, "max_disk_bytes": self.client_max_bytes(client),
        }

    def reservation(
        self, info: Any, frames: int, options: dict[str, Any], client: Client, upload_hold: str | None = None
    ) -> Reservation:
        """The disk bytes a job of ``frames`` frames of this video will write (`service.jobs.usage`)."""
        people = self.jobs.reserve_people_per_frame
        return Reservation(
            upload_hold=upload_hold,
            result_bytes=expected_result_bytes(frames, people_per_frame=people, vertices=bool(options.get("vertices"))),
            overlay_bytes=expected_overlay_bytes(frames, info.width, info.height) if options.get("render") else 0,
            client_max_bytes=self.client_max_bytes(client),
            room=self.disk.room,
        )

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
        frame_range: FrameRange | None = None,
        upload_hold: str | None = None,
    ) -> Job:
        """Probe the video (a bad one is refused here, as a 4xx), then queue a job for it, ``client``'s.

        ``frame_range``: kept in the job's options (so every attempt runs the same frames); a
        range the video is known to end before is refused here (``frame_range_past_end``).

        An upload (``move``) that is refused for any reason is deleted at once: nothing a
        refused request sent stays on disk."""
        try:
            if callback_url is not None:
                if not self.api.allow_callbacks:
                    raise InputError("callbacks_disabled", "this service does not call callback URLs (allow_callbacks: false)")
                await self.call(check_url, callback_url, self.jobs.callback_policy())
            info = await self.call(_probe, path, self.limits)
            expected = info.frame_count
            if frame_range is not None:
                frame_range.check_video(info.frame_count, info.frame_count_exact, info.duration_s)
                options = {**options, **frame_range.to_options()}
                expected = frame_range.expected_frames(info.frame_count, info.frame_count_exact)
            job = await self.call(
                self.store.create,
                "video",
                input_file=path,
                move_input=move,
                options={**options, "frames_expected": expected},
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                fingerprint=fingerprint,
                client=client.id,
                client_limit=self.client_limit(client),
                # a range in seconds has no exact frame count before decoding: the whole video's bounds it
                reservation=self.reservation(info, info.frame_count if expected is None else expected, options, client,
                                             upload_hold),
            )
        except BaseException:
            if move:  # once accepted the upload has moved into the job's folder
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
        self._nudge()
        return job

    async def cancel_and_delete(self, job_id: str, client: Client, wait_s: float = 10.0) -> Job | None:
        """Delete a job ``client`` may see: None once deleted; a running one is asked to stop
        through the store (`JobStore.request_delete`: its worker, wherever it runs, stops it at
        its next chunk and deletes it) and, if that takes longer than ``wait_s``, returned
        ``deleting``: the 202 that promises it."""
        job = await self.call(self.store.request_delete, job_id, client.scope)
        deadline = time.monotonic() + wait_s
        while job is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            try:
                job = await self.call(self.store.get, job_id)
            except PoseError as exc:
                if exc.code == "job_not_found":
                    return None
                raise
            if job.state != "running":  # stopped meanwhile, by a worker that did not delete it (yet)
                await self.call(self.store.delete_if_requested, job_id)
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
        paths = [p for p in (job.result_paths.get(n) for n in names) if p is not None and p.is_file()]
        if len(paths) != len(names):
            raise PoseError("result_missing", f"the {fmt} result of job {job.id} is not on disk", status=500)
        if fmt == "npz":
            return FileResponse(paths[0], media_type="application/octet-stream", headers=attachment(f"{job.id}.npz"))
        if fmt == "jsonl":
            return FileResponse(paths[0], media_type="application/jsonl")
        return StreamingResponse(iter_json_document(paths[0], paths[1]), media_type="application/json")


    def export_body(self) -> Any:
        """The SMPL rig for exports, from the configured caches (`smpl_missing` if absent there)."""
        if self._body is None:
            if self.api.models is None:
                raise PoseError("smpl_missing", "this deployment has no model caches configured for exports", status=503)
            self._body = load_body(find_smpl(self.api.models.roots()))
        return self._body

    async def export_response(self, job: Job, fmt: str, track: int | None, include_unconfirmed: bool) -> Response:
        """A finished job's tracks in an export format (`pipeline.export`), as an attachment: one
        file (one track, MOT, PHALP) or a zip (every track; OBJ: always), see `zipped`."""
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
        if not zipped(fmt, track):
            filename, media = f"{job.id}-{names[0]}", FORMATS[fmt][1]
        else:
            filename, media = f"{job.id}-{fmt}.zip", "application/zip"
        return FileResponse(
            out,
            media_type=media,
            headers=attachment(filename),
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
        overlay = job.overlay or {}
        if overlay.get("state") == "pending":
            raise PoseError(
                "overlay_pending",
                f"job {job.id} has succeeded and its overlay video is still being drawn: poll the job until overlay.state is ready",
                status=409,
                details={"overlay": overlay},
            )
        if overlay.get("state") == "failed":
            error = overlay["error"] or {"code": "render_failed", "message": "the overlay could not be drawn"}
            raise PoseError(error["code"], f"the overlay video of job {job.id} failed: {error['message']}", status=status_of(error["code"]))
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


def _probe(path: Path, limits: Any) -> Any:
    return probe_video(path, limits)


def request_fingerprint(**fields: Any) -> str:
    """sha256 of what a request asked for (the video's own digest or path, and its options):
    what an idempotent replay must repeat."""
    doc = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def range_field(frame_range: FrameRange | None) -> dict[str, int | float]:
    """A frame range in a request's fingerprint only when asked (older fingerprints stay valid)."""
    return {} if frame_range is None else frame_range.to_options()


def render_field(render: bool) -> dict[str, bool]:
    """``render`` in a request's fingerprint only when asked, so that requests made before the
    option existed keep their fingerprints."""
    return {"render": True} if render else {}
