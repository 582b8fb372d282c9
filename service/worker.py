"""The video worker: claims jobs from the store and runs each through
`pipeline.video.loop.VideoLoop`, the same loop as ``python -m pipeline video``, with the model
stages its host gives it (Ray Serve's Detector and MeshRegressor under ``Tracker``).

* the appearance step and PHALP tracking run here, in the process that holds the job, so a
  job's state has one home and the 1 MiB UV maps never cross a process boundary;
* after every chunk the finished frames are appended to the job's result on disk and the loop's
  state (tracker included) is checkpointed with the job, fenced by the attempt's token; a new
  attempt (this worker restarted, another worker took an expired lease) resumes there, so a
  lost worker costs at most the chunks in flight; a stage that fails or pushes back is retried
  with back-off inside the job (the loop asks the stages which failures are transient).

A job with a frame range (``start_frame``/``end_frame`` or ``start_s``/``end_s`` in its options,
`pipeline.video.frame_range`) runs the loop on those frames only, resumes within them, and fails
with the range's code when the video turns out to end before it.

A job submitted with ``render=true`` succeeds as soon as its result is published, its overlay
``pending``; the worker then asks its host's Renderer (`OverlayStage`) to draw the overlay video
from the input and the finalized result, in the background, and records it ``ready`` or
``failed`` (`service.jobs.overlays`); a render lost with its worker or its Renderer is tried
again by any worker once its lease runs out, a bounded number of times. Progress and stage
timings go to the store after each chunk; cancellation is checked between chunks. A job's
callback events (``job.succeeded``, ``job.failed``, ``job.cancelled``; for a render job
``job.overlay_ready`` / ``job.overlay_failed``) are written by the store with the change
(`service.jobs.outbox`); every worker delivers the due events of all jobs, with retries, so
an event outlives the worker that made it (failures never fail a job).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from pipeline.errors import PoseError
from pipeline.schema import models_used
from pipeline.tracking.loading import load_appearance_and_tracking
from pipeline.tracking.state import load_state, save_state
from pipeline.video.decode import VideoLimits
from pipeline.video.frame_range import FrameRange
from pipeline.video.loop import FrameStages, VideoLoop
from service.callbacks import post
from service.jobs import Job, JobStore, redact
from service.jobs.db import permanent_error
from service.jobs.outbox import EVENT_HEADER
from service.settings import JobSettings, ModelSettings

logger = logging.getLogger(__name__)

VIDEO_WORK_DIR = "work"  # segments of the result being written, inside the job folder
# A claimed callback event is held this long: beyond a delivery's tries and timeouts
# (`jobs.callback_tries` x 5 s, with back-off), so only a dead worker's events are claimed again.
CALLBACK_HOLD_S = 120.0
# Free bytes on the data folder's disk below which, once a job could not write, no job is
# claimed: a chunk's checkpoint and result segment of a long 1080p video stay well below this.
MIN_FREE_TO_RUN = 64 * 2**20


def disk_full(exc: BaseException) -> PoseError | None:
    """A failure that is the disk's, not the job's (no space, quota), as ``storage_full``; else None."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return PoseError(
                "storage_full",
                f"the data folder's disk has no room to write this job's results ({link.strerror})",
                status=507,
            )
        link = link.__cause__ or link.__context__
    return None
# Failures of a render worth another try (its Renderer replica died, is full or restarting).
TRANSIENT_RENDER_CODES = ("stage_unavailable", "overloaded", "stage_timeout")


class OverlayStage(Protocol):
    """Who draws overlay videos for the worker (Serve's Renderer deployment under ``Tracker``)."""

    async def render(self, clip: str, jsonl: str, meta: str, out: str, *, limits: VideoLimits, chunk_size: int) -> None:
        """Draw the result (``jsonl`` + ``meta``) over ``clip`` into ``out``, atomically."""
        ...


class VideoWorker:
    """One video worker: a background loop that claims jobs and runs each in a thread; its
    methods only nudge the loop (`wake`, `cancel`). Built inside a running event loop."""

    def __init__(
        self,
        stages: FrameStages,
        settings: JobSettings,
        models: ModelSettings,
        *,
        map_error: Callable[[BaseException], PoseError | None],
        unwrap: Callable[[BaseException], BaseException] = lambda exc: exc,
        nodes: Callable[[], int] = lambda: 1,
        renderer: OverlayStage | None = None,
        claim_after_health_check: bool = False,
    ) -> None:
        self.map_error = map_error  # a failure of the host's stages as a stable code
        self.unwrap = unwrap  # the original exception inside the host's wrappers
        self.nodes = nodes
        self.settings = settings
        self.models = models
        self.limits = settings.video_limits.limits()
        self.renderer = renderer  # None: render jobs' overlays fail renderer_unavailable
        started = time.perf_counter()
        appearance, tracker_models = load_appearance_and_tracking(
            models.roots(), device=models.device, download=models.download
        )
        self.loop = VideoLoop(
            stages, appearance, tracker_models,
            chunk_size=settings.chunk_size, limits=self.limits, max_stage_wait_s=settings.max_stage_wait_s,
        )
        self.load_s = time.perf_counter() - started  # models loaded
        self.store: JobStore | None = None
        self.store_error: PoseError | None = None
        self._overlays: dict[str, asyncio.Task[None]] = {}  # job id -> its overlay render in flight here
        self._overlay_tokens: dict[str, int] = {}  # job id -> render try this replica runs
        self._overlay_sweep = -math.inf  # the first loop sweeps at once
        for job_id in self._open_store() or []:
            self._schedule_ended(job_id)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._tokens: dict[str, int] = {}  # job id -> attempt this replica runs
        self._wake = asyncio.Event()
        self._last_purge = 0.0
        self._loop_beat = time.monotonic()
        self._no_room_since: float | None = None  # a job was handed back for want of disk room
        self._stopping = False  # set when the host stops the worker: the loop claims nothing more
        # A host that may kill a replica still starting without stopping it (Serve does) says the
        # worker is serving by checking its health: until then it claims nothing, so nothing it
        # claimed can be lost with it (and counted as a crash).
        self._serving = not claim_after_health_check
        self._loop_task = asyncio.get_running_loop().create_task(self._worker())
        self._delivery_task = asyncio.get_running_loop().create_task(self._deliver_callbacks())

    # -- called by the API, through the host ---------------------------------------------------
    async def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""
        self._wake.set()

    async def ready(self) -> bool:
        return not self._loop_task.done()

    def _open_store(self) -> list[str] | None:
        """Open the store and recover after a restart: the jobs that recovery ended (their
        callbacks are due), or None on an unusable data folder or an unreachable database; the
        worker then waits (the Ingress refuses video jobs meanwhile) and tries again each poll."""
        try:
            # a running job's store calls ride out a database fault for up to a lease
            self.store = self.settings.open_store(self.nodes(), retry_s=self.settings.lease_s)
        except PoseError as exc:
            if exc.code not in ("data_dir_unavailable", "job_store_unavailable"):
                raise
            if self.store_error is None:
                logger.error("%s", exc.message)
            self.store_error = exc
            return None
        self.store_error = None
        # Jobs of other workers come back only through their expired leases (`expire_leases`).
        report = self.store.recover_after_restart(self.settings.max_attempts, requeue_running=False)
        logger.info(
            "Tracker up on %s: requeued %d, failed %d, cancelled %d jobs after restart",
            self.settings.data_dir, len(report.requeued), len(report.failed), len(report.cancelled),
        )
        return report.failed + report.cancelled

    async def queue_stats(self) -> tuple[int, int]:
        """Jobs queued in the store, and jobs this worker runs (what the autoscaling follows)."""
        counts = await asyncio.to_thread(self.store.counts) if self.store is not None else {}
        return int(counts.get("queued", 0)), len(self._active)

    def stop(self) -> None:
        """The host stops this worker (scale-down, redeploy): claim nothing more and hand its jobs
        back to the queue at once, so another worker resumes them from their checkpoints instead
        of waiting for the lease to run out; their threads stop at their next write (the token is
        then stale)."""
        self._stopping = True
        store = getattr(self, "store", None)
        if store is None:
            return
        for job_id, token in list(getattr(self, "_tokens", {}).items()):
            with contextlib.suppress(Exception):
                store.release(job_id, token)
                logger.info("job %s handed back to the queue (attempt %d)", job_id, token)
        for job_id, token in list(getattr(self, "_overlay_tokens", {}).items()):
            with contextlib.suppress(Exception):
                store.release_overlay(job_id, token)
                logger.info("job %s: overlay render handed back (try %d)", job_id, token)

    async def info(self) -> dict[str, Any]:
        return {
            "active_jobs": sorted(self._active),
            "active_overlays": sorted(self._overlays),
            "max_active": self.settings.max_active,
            "max_queued": self.settings.max_queued,
            "chunk_size": self.settings.chunk_size,
            "worker_alive": not self._loop_task.done(),
            "job_store": redact(self.store.url) if self.store is not None else None,
            "job_store_shared": None if self.store is None else not self.store.node_local,
            "store_error": None if self.store_error is None else self.store_error.to_dict()["error"],
        }

    # -- the worker --------------------------------------------------------------------------
    async def check_health(self) -> None:
        """The host's health check: the worker loop runs and has gone round recently (a loop stuck
        in a store call fails it, and Serve replaces the replica; its jobs' leases run out)."""
        if self._loop_task.done():
            raise RuntimeError("the video worker loop has stopped")
        if not self._serving:  # the host checks only replicas it counts as running: claim from now on
            self._serving = True
            self._wake.set()
        stalled = time.monotonic() - self._loop_beat
        limit = max(60.0, 10 * self.settings.poll_interval_s, 2 * self.settings.lease_s)
        if stalled > limit:
            raise RuntimeError(f"the video worker loop has not gone round for {stalled:.0f} s (limit {limit:.0f} s)")

    async def _worker(self) -> None:
        while not self._stopping:
            self._loop_beat = time.monotonic()
            try:
                if self.store is None:
                    ended = await asyncio.to_thread(self._open_store)
                    if ended is None:
                        await asyncio.sleep(self.settings.poll_interval_s)
                        continue
                    for job_id in ended:
                        self._schedule_ended(job_id)
                if self._serving:
                    await self._claim_jobs()
                    await self._sweep_overlays()
                if time.time() - self._last_purge > 600 and self.store is not None:
                    self._last_purge = time.time()
                    purged = await asyncio.to_thread(self.store.purge_expired)
                    if purged:
                        logger.info("retention: deleted %d finished jobs", len(purged))
            except Exception:  # the loop must outlive a failing store call (disk full, locked)
                if self._stopping:  # the replica's executor is already shut down: nothing to retry
                    return
                logger.exception("video worker: claiming jobs failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    async def _claim_jobs(self) -> None:
        assert self.store is not None  # jobs run only once the store is open
        expired = await asyncio.to_thread(self.store.expire_leases, self.settings.max_attempts, self.settings.stall_s)
        for job_id in expired.failed + expired.cancelled:
            self._schedule_ended(job_id)
        if not await asyncio.to_thread(self._room_to_run):
            return
        while not self._stopping and len(self._active) < self.settings.max_active:
            job = await asyncio.to_thread(self.store.claim_next, self.settings.lease_s, limit_running=False)
            if job is None:
                return
            if self._stopping:  # stopped while the claim ran: hand the job straight back, as `stop` did the others
                with contextlib.suppress(Exception):  # else its lease runs out
                    await asyncio.to_thread(self.store.release, job.id, job.attempts)
                    logger.info("job %s handed back to the queue (attempt %d)", job.id, job.attempts)
                return
            where = "from its checkpoint at frame %d" % job.checkpoint["next_frame"] if job.checkpoint else "from the start"
            logger.info("job %s claimed (attempt %d), %s", job.id, job.attempts, where)
            self._active[job.id] = asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        """One attempt of a job to its end state (or until a newer attempt owns it); never raises."""
        assert self.store is not None  # jobs run only once the store is open
        token = job.attempts
        self._tokens[job.id] = token
        beat = asyncio.get_running_loop().create_task(self._keep_lease(self.store.heartbeat, job.id, token))
        superseded = False
        try:
            names = await asyncio.to_thread(self._process, job, token)
            finished = await asyncio.to_thread(self.store.finish, job.id, names, token)
            logger.info("job %s %s (attempt %d)", job.id, finished.state, token)
            await asyncio.to_thread(self._clean_after_finish, job.id, names)
            if finished.overlay_state == "pending" and finished.state == "succeeded":
                self._start_overlay(job.id)
        except _Cancelled:
            with contextlib.suppress(PoseError):
                await asyncio.to_thread(self.store.mark_cancelled, job.id, token)
            logger.info("job %s cancelled", job.id)
        except Exception as exc:
            err = self._as_job_error(exc)
            full = disk_full(exc)
            if full is not None:  # the job is fine, the disk is not: it waits in the queue for room
                superseded = True  # nothing was decided about the job: no callback
                self._no_room_since = time.monotonic()
                logger.warning("job %s: %s; handed back to the queue until there is room", job.id, full.message)
                with contextlib.suppress(Exception):  # a store on the same full disk: the lease runs out instead
                    await asyncio.to_thread(self.store.release, job.id, token, full)
            elif err.code in ("attempt_superseded", "job_state_conflict"):  # another attempt owns it, or it was handed back
                superseded = True
                logger.warning("job %s: attempt %d stops, %s", job.id, token, err.message)
            elif err.code == "job_store_unavailable":  # the database, not the job: never the job's failure
                superseded = True
                logger.warning("job %s: attempt %d stops, the job store is away (%s); the job goes back to the "
                               "queue, or its lease runs out and another attempt resumes it", job.id, token, err.message)
                await asyncio.to_thread(self._hand_back, job.id, token)
            else:
                if err.code == "internal_error":
                    logger.exception("job %s failed unexpectedly", job.id)
                else:
                    logger.info("job %s failed: %s", job.id, err)
                await asyncio.to_thread(self._record_failure, job.id, token, err)
        finally:
            beat.cancel()
            self._active.pop(job.id, None)
            self._tokens.pop(job.id, None)
            self._wake.set()
        if superseded:
            return
        await asyncio.to_thread(self.store.delete_if_requested, job.id)

    def _room_to_run(self) -> bool:
        """Whether the data folder's disk has room for a job to write its next chunk: after a job
        was handed back for want of room, no job is claimed below `MIN_FREE_TO_RUN` bytes free
        (claiming it would only hand it back again); a job resumes once room returns."""
        if self._no_room_since is None:
            return True
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < MIN_FREE_TO_RUN:
            return False
        logger.info("the data folder has room again (%d bytes free): claiming jobs", free)
        self._no_room_since = None
        return True

    def _hand_back(self, job_id: str, token: int) -> None:
        """Give the job back to the queue after the store was away (once more within the
        store's retry bound); if the store is still away, the job's lease runs out instead."""
        assert self.store is not None  # jobs run only once the store is open
        try:
            self.store.release(job_id, token)
        except Exception as exc:  # superseded meanwhile, or still away: its lease decides
            logger.warning("job %s: not handed back (%s); its lease will run out", job_id, exc)

    def _record_failure(self, job_id: str, token: int, err: PoseError) -> None:
        """Record the failure, retrying a failing store (disk full, database away) for up to a
        lease; past that the job's lease runs out and the next attempt records or redoes it."""
        assert self.store is not None  # jobs run only once the store is open
        deadline, delay = time.monotonic() + self.settings.lease_s, 0.5
        while True:
            try:
                self.store.fail(job_id, err.code, err.message, token)
                return
            except PoseError as exc:  # another attempt owns it, or it ended meanwhile: theirs to record
                logger.warning("job %s: failure not recorded: %s", job_id, exc)
                return
            except Exception:
                if time.monotonic() + delay > deadline:
                    logger.exception("job %s: its failure (%s) could not be recorded; its lease will run out "
                                     "and another attempt takes the job", job_id, err.code)
                    return
                logger.warning("job %s: recording its failure failed; retrying in %.1f s", job_id, delay, exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _keep_lease(self, renew: Callable[[str, int, float], None], job_id: str, token: int) -> None:
        """Renew attempt ``token``'s lease (``renew``: a job's, or its overlay render's) every
        third of a lease while a long chunk or render runs, until cancelled or superseded."""
        while not self._stopping:  # a stopped worker has handed its jobs back
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                await asyncio.to_thread(renew, job_id, token, self.settings.lease_s)
            except PoseError:  # another attempt holds it now (or the job is gone)
                return
            except Exception:
                if self._stopping:  # the replica's executor is already shut down
                    return
                logger.exception("job %s: %s failed", job_id, getattr(renew, "__name__", "lease renewal"))

    def _process(self, job: Job, token: int) -> dict[str, str]:
        """Run (or resume) the job in this thread; write its result files; their names."""
        store = self.store
        assert store is not None  # jobs run only once the store is open
        if job.input_path is None:
            raise PoseError("input_missing", "the job has no input video")
        job_dir = store.job_dir(job.id)
        checkpoint: dict[str, Any] = job.checkpoint or {}
        vertices = bool(job.options.get("vertices", False))
        resume = None
        if job.checkpoint:
            try:
                resume = load_state(job_dir / checkpoint["file"])
            except PoseError as exc:  # the file is gone or damaged: the result is deterministic, start over
                logger.warning("job %s: checkpoint %s unreadable (%s); starting from the first frame",
                               job.id, checkpoint["file"], exc)
        committed = {"file": None if resume is None else checkpoint["file"]}
        # a frame index of the video (a range's jobs start past 0); frames done count the range's
        resumed_from = int(checkpoint["next_frame"]) if resume is not None else 0
        done_before = int(checkpoint.get("frames_done", resumed_from)) if resume is not None else 0
        frame_range = FrameRange.from_options(job.options)
        started = time.perf_counter()

        def on_chunk(state: dict[str, Any], done: int, total: int | None, timings: dict[str, float]) -> None:
            name = f"checkpoint-a{token}-{int(state['chunks']):06d}.npz"
            _save_checkpoint(state, job_dir / name)
            timings = {**timings, "total_s": time.perf_counter() - started}
            store.save_checkpoint(
                job.id, token,
                {"file": name, "next_frame": int(state["next_frame"]), "frames_done": done, "chunks": int(state["chunks"]),
                 "resumed_from": resumed_from},
                done, total, timings, self.settings.lease_s,
            )
            previous, committed["file"] = committed["file"], name
            if previous and previous != name:
                with contextlib.suppress(FileNotFoundError):
                    (job_dir / previous).unlink()

        def should_stop() -> bool:
            return store.is_cancelled(job.id)

        def on_start(total: int | None) -> None:  # frames_total shown from the start
            store.update_progress(job.id, done_before, total, token=token)

        try:
            done = self.loop.run(
                job.input_path, job_dir / VIDEO_WORK_DIR, token=token, vertices=vertices,
                resume=resume, on_chunk=on_chunk, should_stop=should_stop, on_start=on_start, frame_range=frame_range,
            )
        except PoseError as exc:
            if exc.code == "cancelled":
                raise _Cancelled() from None
            raise
        if done.resumed_from:
            logger.info("job %s: attempt %d resumed at frame %d", job.id, token, done.resumed_from)
        return done.writer.finalize(job_dir, done.meta, models_used("detector", "mesh", "tracker", detector=self.models.detector), suffix=f"a{token}")

    # -- overlays ------------------------------------------------------------------------------
    def _start_overlay(self, job_id: str) -> None:
        """Render a succeeded job's pending overlay in the background (once per replica)."""
        if job_id not in self._overlays and not self._stopping:
            self._overlays[job_id] = asyncio.get_running_loop().create_task(self._overlay(job_id))

    async def _sweep_overlays(self) -> None:
        """Pending overlays no live lease holds (their worker or Renderer was lost, or their
        worker stopped before asking): rendered here. Every lease or so, not every poll."""
        assert self.store is not None  # jobs run only once the store is open
        if time.monotonic() - self._overlay_sweep < min(self.settings.lease_s, 30.0):
            return
        self._overlay_sweep = time.monotonic()
        for job_id in await asyncio.to_thread(self.store.pending_overlays):
            self._start_overlay(job_id)

    async def _overlay(self, job_id: str) -> None:
        """Claim the job's render and ask the Renderer, again after a transient failure, until
        the overlay is ready or failed (or another worker holds it); never raises."""
        store = self.store
        assert store is not None  # jobs run only once the store is open
        max_tries, delay = self.settings.max_attempts, 1.0
        try:
            while not self._stopping:
                claim = await asyncio.to_thread(store.claim_overlay, job_id, self.settings.lease_s, max_tries)
                if claim.outcome == "exhausted":
                    logger.warning("job %s: overlay failed, its render was lost %d times", job_id, max_tries)
                if claim.outcome != "claimed":
                    return
                token = claim.token
                self._overlay_tokens[job_id] = token
                beat = asyncio.get_running_loop().create_task(self._keep_lease(store.renew_overlay, job_id, token))
                try:
                    name = await self._render(job_id, token)
                    error = None
                except Exception as exc:  # the Renderer's failure, or its replica's
                    error = self._render_error(exc)
                finally:
                    beat.cancel()
                    self._overlay_tokens.pop(job_id, None)
                if error is None:
                    await asyncio.to_thread(store.overlay_ready, job_id, token, name)
                    await asyncio.to_thread(self._clean_overlays, job_id, name)
                    logger.info("job %s: overlay ready (try %d)", job_id, token)
                    return
                if error.code == "renderer_unavailable" and token < max_tries and self.renderer is not None:
                    logger.warning("job %s: overlay try %d: %s; trying again", job_id, token, error.message)
                    await asyncio.to_thread(store.release_overlay, job_id, token)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                logger.warning("job %s: overlay failed: %s", job_id, error)
                await asyncio.to_thread(store.overlay_failed, job_id, token, error.code, error.message)
                return
        except PoseError as exc:  # the job was deleted, or another try owns the render now
            logger.info("job %s: overlay render stops: %s", job_id, exc)
        except Exception:  # the store failed: the lease runs out and a sweep tries again
            logger.exception("job %s: overlay render could not be recorded", job_id)
        finally:
            self._overlays.pop(job_id, None)

    async def _render(self, job_id: str, token: int) -> str:
        """Ask the Renderer for try ``token``'s overlay file; its name in the job folder."""
        assert self.store is not None  # jobs run only once the store is open
        if self.renderer is None:
            raise PoseError("renderer_unavailable", "this deployment has no Renderer to draw overlays", status=503)
        job = await asyncio.to_thread(self.store.get, job_id)
        jsonl, meta = job.result_paths.get("jsonl"), job.result_paths.get("meta")
        if job.input_path is None or jsonl is None or meta is None:
            raise PoseError("render_failed", "the job has no input video or no result to draw", status=500)
        name = f"overlay-r{token}.mp4"
        started = time.perf_counter()
        await self.renderer.render(
            str(job.input_path), str(jsonl), str(meta), str(self.store.job_dir(job_id) / name),
            limits=self.limits, chunk_size=self.settings.chunk_size,
        )
        logger.info("job %s: overlay rendered in %.1f s", job_id, time.perf_counter() - started)
        return name

    def _render_error(self, exc: BaseException) -> PoseError:
        """A render's failure as the overlay's code: ``renderer_unavailable`` when the Renderer
        could not answer (worth another try), ``render_failed`` with the cause otherwise."""
        err = self._as_job_error(exc)
        if err.code in TRANSIENT_RENDER_CODES or err.code == "renderer_unavailable":
            return PoseError("renderer_unavailable", f"the Renderer did not answer: {err.message}", status=503)
        return PoseError("render_failed", f"the overlay could not be drawn: {err.code}: {err.message}", status=500)

    def _clean_overlays(self, job_id: str, keep: str) -> None:
        """Files of other render tries go (a lost try's file, or what a killed Renderer left
        half-written under its hidden temporary name)."""
        assert self.store is not None  # jobs run only once the store is open
        job_dir = self.store.job_dir(job_id)
        for path in [*job_dir.glob("overlay-*"), *job_dir.glob(".overlay-*")]:
            if path.name != keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _clean_after_finish(self, job_id: str, names: dict[str, str]) -> None:
        """The published files stay; segments, checkpoints and earlier attempts' files go."""
        assert self.store is not None  # jobs run only once the store is open
        job_dir = self.store.job_dir(job_id)
        shutil.rmtree(job_dir / VIDEO_WORK_DIR, ignore_errors=True)
        keep = set(names.values())
        for path in job_dir.iterdir():
            if path.is_file() and path.name.startswith(("checkpoint-", "result", "overlay")) and path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- jobs that ended elsewhere, callbacks ---------------------------------------------------
    def _schedule_ended(self, job_id: str) -> None:
        """A job ended by recovery or an expired lease: carry out a delete its client asked
        while it ran (its worker died before it could). Its callback is in the outbox already."""
        assert self.store is not None  # jobs end only once the store is open
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            asyncio.get_running_loop().create_task(asyncio.to_thread(self.store.delete_if_requested, job_id))

    async def _deliver_callbacks(self) -> None:
        """Deliver the store's due callback events (`service.jobs.outbox`), whichever worker's
        jobs they are, every poll; apart from the job loop, so a slow receiver never holds it."""
        while not self._stopping:
            try:
                if self.store is not None:
                    while await asyncio.to_thread(self._deliver_due):
                        pass
            except Exception:  # the store faltering: the events wait in it for the next round
                if self._stopping:
                    return
                logger.exception("callbacks: delivery round failed; retrying")
            await asyncio.sleep(self.settings.poll_interval_s)

    def _deliver_due(self, limit: int = 16) -> bool:
        """One batch of due events: each POSTed (signed, checked, a few quick tries, with its
        event id), then marked delivered or due again after the outbox's back-off. Whether a
        full batch was taken (more may be due)."""
        assert self.store is not None  # called once the store is open
        events = self.store.claim_callbacks(hold_s=CALLBACK_HOLD_S, limit=limit)
        for event in events:
            try:
                answer = post(event.url, event.body, self.settings.callback_policy(event.client),
                              headers={EVENT_HEADER: event.id})
            except Exception as exc:  # refused now, bad secrets, network or HTTP failure: the job's state stands
                again = self.store.callback_failed(event.id, f"{type(exc).__name__}: {exc}")
                logger.warning("job %s: %s callback failed (%s)%s", event.job_id, event.event, exc,
                               "; tried again later" if again else "; given up")
                continue
            self.store.callback_delivered(event.id)
            logger.info("job %s: %s callback %s answered %s", event.job_id, event.event, event.id, answer)
        return len(events) == limit

    def _as_job_error(self, exc: BaseException) -> PoseError:
        exc = self.unwrap(exc)
        if isinstance(exc, PoseError):
            return exc
        stored = permanent_error(exc)  # a database error retrying does not fix: its cause, not internal_error
        if stored is not None:
            return stored
        mapped = self.map_error(exc)
        if mapped is not None:
            return mapped
        return PoseError("internal_error", f"unexpected error while processing the video: {type(exc).__name__}", status=500)


class _Cancelled(Exception):
    """The job was cancelled between chunks."""


def _save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """The loop's state as one uncompressed .npz, atomically (written every chunk: no zlib)."""
    tmp = path.with_name("." + path.name + ".tmp")
    save_state(state, tmp, compress=False)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
