"""``VideoPipeline``: runs video jobs from the job store through the model deployments.

One replica owns job execution (the store's recovery assumes one worker process per data
folder). At start it re-queues or fails what a previous replica left running, then a background
loop claims queued jobs, up to ``max_active`` at once, and drives each chunk by chunk:

* frames are decoded in a worker thread and put into Ray's object store once (``ray.put``); the
  Detector and the MeshRegressor both receive the reference, and the detections go from the
  Detector straight to the MeshRegressor (a response passed as an argument), never through here;
* chunk ``k + 1`` is submitted to detection and mesh recovery before chunk ``k`` is tracked, so
  decoding, the models and tracking overlap; crops of all jobs share the MeshRegressor's batches;
* tracking is sequential per job on the Tracker replica holding that job's state (multiplexed by
  job id); a Tracker that lost the state (restart, eviction) makes the job start over rather
  than continue with fresh tracks;
* the result document is assembled by the same `VideoResultBuilder` as the in-process runner.

Progress and stage timings go to the store after each chunk; cancellation is checked between
chunks; a job's optional callback URL is POSTed once it ends (failures are logged, never fail it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.errors import PoseError
from pipeline.jobs import Job, JobStore
from pipeline.video import FrameChunk, VideoLimits

from .common import unwrap_error

logger = logging.getLogger(__name__)


class VideoLimitArgs(BaseModel):
    """`pipeline.video.VideoLimits` as settings (what one video may cost; over a limit is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    max_frames: int = Field(default=18_000, ge=1)
    max_duration_s: float = Field(default=600.0, gt=0)
    max_pixels: int = Field(default=4096 * 2304, ge=1)

    def limits(self) -> VideoLimits:
        return VideoLimits(**self.model_dump())


class JobSettings(BaseModel):
    """Where jobs live and how many run; shared by the Ingress (accepts jobs) and VideoPipeline (runs them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str  # SQLite database + one folder per job; must be the same folder for both deployments
    max_active: int = Field(default=2, ge=1)  # jobs processed at once
    max_queued: int = Field(default=32, ge=0)  # accepted jobs waiting beyond those; then 429
    retention_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)  # finished jobs kept this long; None: forever
    max_attempts: int = Field(default=3, ge=1)  # starts of one job (restarts included) before it fails
    chunk_size: int = Field(default=8, ge=1, le=256)  # frames decoded and submitted together
    video_limits: VideoLimitArgs = Field(default_factory=VideoLimitArgs)
    poll_interval_s: float = Field(default=1.0, gt=0)  # queue check when no one wakes the worker
    callback_timeout_s: float = Field(default=5.0, gt=0)

    def open_store(self) -> JobStore:
        return JobStore(
            Path(self.data_dir).expanduser(),
            retention_s=self.retention_s,
            max_active=self.max_active,
            max_queued=self.max_queued,
        )


class _Cancelled(Exception):
    """The job was cancelled between chunks."""


class _Restart(Exception):
    """The job must start over (the Tracker lost its state)."""


_RETRYABLE = ("stage_unavailable", "tracker_state_lost")


@serve.deployment(name="VideoPipeline", num_replicas=1, max_ongoing_requests=256, health_check_period_s=10)
class VideoPipeline:
    """Owns job execution; its methods only nudge the background worker (`wake`, `cancel`)."""

    def __init__(
        self,
        detector: DeploymentHandle,
        regressor: DeploymentHandle,
        tracker: DeploymentHandle,
        settings: JobSettings,
    ) -> None:
        self.detector = detector
        self.regressor = regressor
        self.tracker = tracker
        self.settings = settings
        self.limits = settings.video_limits.limits()
        self.store = settings.open_store()
        report = self.store.recover_after_restart(settings.max_attempts)
        logger.info(
            "VideoPipeline up on %s: requeued %d, failed %d, cancelled %d jobs after restart",
            settings.data_dir, len(report.requeued), len(report.failed), len(report.cancelled),
        )
        for job_id in report.failed + report.cancelled:
            self._schedule_callback(job_id)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._delete_when_stopped: set[str] = set()
        self._wake = asyncio.Event()
        self._last_purge = 0.0
        self._loop_task = asyncio.get_running_loop().create_task(self._worker())

    # -- called by the Ingress -------------------------------------------------------------
    async def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""
        self._wake.set()

    async def cancel(self, job_id: str, delete: bool = False) -> None:
        """Stop a running job at its next chunk (the store already has the flag); ``delete``:
        remove it once stopped."""
        if delete:
            self._delete_when_stopped.add(job_id)
        task = self._active.get(job_id)
        if task is None and delete:
            await asyncio.to_thread(self._delete_if_finished, job_id)

    async def ready(self) -> bool:
        return not self._loop_task.done()

    async def info(self) -> dict[str, Any]:
        return {
            "active_jobs": sorted(self._active),
            "max_active": self.settings.max_active,
            "max_queued": self.settings.max_queued,
            "chunk_size": self.settings.chunk_size,
            "worker_alive": not self._loop_task.done(),
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    # -- the worker --------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            try:
                await self._claim_jobs()
                if time.time() - self._last_purge > 600:
                    self._last_purge = time.time()
                    purged = await asyncio.to_thread(self.store.purge_expired)
                    if purged:
                        logger.info("retention: deleted %d finished jobs", len(purged))
            except Exception:  # the loop must outlive a failing store call (disk full, locked)
                logger.exception("video worker: claiming jobs failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    async def _claim_jobs(self) -> None:
        while len(self._active) < self.settings.max_active:
            job = await asyncio.to_thread(self.store.claim_next)
            if job is None:
                return
            logger.info("job %s claimed (attempt %d)", job.id, job.attempts)
            self._active[job.id] = asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        """One job to its end state; never raises."""
        try:
            retries = 0
            while True:
                try:
                    paths = await self._process(job, retries)
                    break
                except _Restart as exc:
                    retries += 1
                    if job.attempts + retries > self.settings.max_attempts:
                        raise PoseError(
                            "interrupted",
                            f"{exc}; started {job.attempts + retries - 1} times, expected at most {self.settings.max_attempts}",
                            status=503,
                        ) from None
                    logger.warning("job %s starts over: %s", job.id, exc)
            await asyncio.to_thread(self.store.finish, job.id, paths)
            logger.info("job %s succeeded", job.id)
        except _Cancelled:
            await asyncio.to_thread(self._stopped_cancelled, job.id)
            logger.info("job %s cancelled", job.id)
        except Exception as exc:
            err = _as_job_error(exc)
            if err.code == "internal_error":
                logger.exception("job %s failed unexpectedly", job.id)
            else:
                logger.info("job %s failed: %s", job.id, err)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.fail, job.id, err.code, err.message)
        finally:
            self._active.pop(job.id, None)
            self._wake.set()
        if job.id in self._delete_when_stopped:
            await asyncio.to_thread(self._delete_if_finished, job.id)
        elif job.callback_url:
            self._schedule_callback(job.id)

    def _stopped_cancelled(self, job_id: str) -> None:
        with contextlib.suppress(PoseError):
            self.store.mark_cancelled(job_id)

    def _delete_if_finished(self, job_id: str) -> None:
        with contextlib.suppress(PoseError):
            self.store.delete(job_id)
            self._delete_when_stopped.discard(job_id)

    async def _process(self, job: Job, retry: int) -> dict[str, str]:
        """Decode, detect, regress, track one job; write its result files; their names."""
        from pipeline.result_npz import video_result_npz
        from pipeline.runner import VideoResultBuilder, video_meta
        from pipeline.schema import MODEL_NAMES
        from pipeline.video import iter_frames, probe_video

        if job.input_path is None:
            raise PoseError("input_missing", "the job has no input video")
        vertices = bool(job.options.get("vertices", False))
        started = time.perf_counter()
        info = await asyncio.to_thread(probe_video, job.input_path, self.limits)
        total = info.frame_count if info.frame_count_exact else None
        await asyncio.to_thread(self.store.update_progress, job.id, 0, total)
        # A fresh tracker state per start: an earlier, interrupted attempt must not leak in.
        tracker = self.tracker.options(multiplexed_model_id=f"{job.id}-{job.attempts}-{retry}")
        builder = VideoResultBuilder()
        timings = {"decode_s": 0.0, "models_s": 0.0, "tracking_s": 0.0}
        frames = iter_frames(job.input_path, self.limits, chunk_size=self.settings.chunk_size)
        done = 0
        pending: list[_Submitted] | None = None
        try:
            while True:
                t0 = time.perf_counter()
                chunk = await asyncio.to_thread(_next_chunk, frames)
                timings["decode_s"] += time.perf_counter() - t0
                submitted = self._submit(chunk, vertices) if chunk is not None else None
                if pending is not None:
                    done = await self._track(pending, tracker, builder, vertices, done, timings)
                    timings["total_s"] = time.perf_counter() - started
                    await asyncio.to_thread(self.store.update_progress, job.id, done, total, timings)
                    if await asyncio.to_thread(self.store.is_cancelled, job.id):
                        raise _Cancelled()
                if submitted is None:
                    break
                pending = submitted
        finally:
            await asyncio.to_thread(frames.close)
        document = builder.result(video_meta(info, done), dict(MODEL_NAMES)).model_dump(mode="json")
        t0 = time.perf_counter()
        await asyncio.to_thread(self.store.write_json_result, job.id, "result.json", document)
        npz = await asyncio.to_thread(video_result_npz, document)
        await asyncio.to_thread(self.store.write_result, job.id, "result.npz", npz)
        timings["write_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started
        await asyncio.to_thread(self.store.update_progress, job.id, done, done, timings)
        return {"json": "result.json", "npz": "result.npz"}

    def _submit(self, chunk: FrameChunk, vertices: bool) -> list[_Submitted]:
        """Every frame of the chunk into the object store once, and on to detection + mesh recovery."""
        import ray

        out = []
        for index, time_s, frame in zip(chunk.indices, chunk.timestamps, chunk.frames):
            ref = ray.put(frame)
            detections = self.detector.detect_with_masks.remote(ref)
            mesh = self.regressor.regress_with_appearance.remote(ref, detections, vertices)
            out.append(_Submitted(int(index), float(time_s), (int(frame.shape[0]), int(frame.shape[1])), ref, mesh))
        return out

    async def _track(
        self,
        submitted: list[_Submitted],
        tracker: DeploymentHandle,
        builder: Any,
        vertices: bool,
        done: int,
        timings: dict[str, float],
    ) -> int:
        from pipeline.runner import observations_for
        from pipeline.schema import people_from_outputs

        for item in submitted:
            t0 = time.perf_counter()
            try:
                result = await item.mesh
            except Exception as exc:
                raise _retryable_or_raise(exc) from None
            t1 = time.perf_counter()
            timings["models_s"] += t1 - t0
            out, scores = result.mesh.output, result.mesh.scores
            people = people_from_outputs(out, scores=scores, vertices=vertices)
            observations = observations_for(out, scores, result.uv, result.embedding)
            try:
                tracks = await tracker.step.remote(item.index, observations, item.size, frames_before=done)
            except Exception as exc:
                raise _retryable_or_raise(exc) from None
            timings["tracking_s"] += time.perf_counter() - t1
            builder.add(item.index, item.time_s, people, tracks)
            done += 1
        return done

    # -- callbacks ---------------------------------------------------------------------------
    def _schedule_callback(self, job_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            asyncio.get_running_loop().create_task(asyncio.to_thread(self._callback, job_id))

    def _callback(self, job_id: str) -> None:
        """POST the job's status to its callback URL once; a failure is logged, the job stands."""
        try:
            job = self.store.get(job_id)
        except PoseError:
            return
        if not job.callback_url:
            return
        body = json.dumps({"event": "job." + job.state, "job": job.to_dict()}).encode()
        request = urllib.request.Request(
            job.callback_url, data=body, method="POST", headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.callback_timeout_s) as response:
                logger.info("job %s: callback answered %s", job_id, response.status)
        except Exception as exc:  # any network or HTTP failure: logged, the job's state stands
            logger.warning("job %s: callback to its URL failed: %s", job_id, exc)


class _Submitted:
    """One frame in flight: where it is in the video and its pending mesh + appearance answer."""

    __slots__ = ("index", "time_s", "size", "ref", "mesh")

    def __init__(self, index: int, time_s: float, size: tuple[int, int], ref: Any, mesh: Any) -> None:
        self.index = index
        self.time_s = time_s
        self.size = size
        self.ref = ref  # keeps the frame in the object store until its answer is in
        self.mesh = mesh


def _next_chunk(frames: Iterator[FrameChunk]) -> FrameChunk | None:
    return next(frames, None)


def _retryable_or_raise(exc: BaseException) -> BaseException:
    """A stage failure that a fresh start can get past becomes `_Restart`; others pass through."""
    from .ingress import as_pose_error

    mapped = as_pose_error(exc)
    if mapped is not None and mapped.code in _RETRYABLE:
        return _Restart(f"{mapped.code}: {mapped.message}")
    return mapped if mapped is not None else unwrap_error(exc)


def _as_job_error(exc: BaseException) -> PoseError:
    exc = unwrap_error(exc)
    if isinstance(exc, PoseError):
        return exc
    return PoseError("internal_error", f"unexpected error while processing the video: {type(exc).__name__}", status=500)
