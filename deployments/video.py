"""``VideoPipeline``: the video workers. Each replica claims jobs from the store and runs them
through `pipeline.video_loop.VideoLoop`, the same loop as ``python -m pipeline video``, with the
Detector and MeshRegressor deployments as its stages:

* frames are decoded in a worker thread and put into Ray's object store once (``ray.put``); the
  Detector and the MeshRegressor both receive the reference, and the detections go from the
  Detector straight to the MeshRegressor (a response passed as an argument), never through here;
  what comes back is small: boxes, scores, mask-head probabilities, HMR2 outputs;
* chunk ``k + 1`` is submitted before chunk ``k`` is tracked; crops of all jobs share the
  MeshRegressor's batches;
* the appearance step and PHALP tracking run here, in the process that holds the job, so a
  job's state has one home and the 1 MiB UV maps never cross a process boundary;
* after every chunk the finished frames are appended to the job's result on disk and the loop's
  state (tracker included) is checkpointed with the job, fenced by the attempt's token; a new
  attempt (this replica restarted, another worker took an expired lease) resumes there, so a
  lost replica costs at most the chunks in flight; a stage replica that dies or pushes back is
  retried with back-off inside the job.

A job submitted with ``render=true`` gets its overlay video drawn (`pipeline.render`) from the
finalized result before it succeeds. Progress and stage timings go to the store after each chunk; cancellation is checked between
chunks; a job's optional callback URL is POSTed once it ends (failures are logged, never fail it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.callbacks import CallbackPolicy, SecretSources
from pipeline.errors import PoseError
from pipeline.job_db import redact
from pipeline.jobs import Job, JobStore
from pipeline.video import FrameChunk, VideoLimits

from .common import ModelSettings, as_pose_error, start_info, unwrap_error

logger = logging.getLogger(__name__)

def tracker_available(*, tiny: bool = False) -> bool:
    """Whether this installation has the PHALP tracker (and, for the tiny profile, its tiny
    factory); the graph leaves video jobs out otherwise."""
    import importlib.util

    modules = ["pipeline.tracking.tracker", "pipeline.models.phalp.loading"]
    if tiny:
        modules.append("pipeline.tiny.phalp")
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:
        return False


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

    data_dir: str  # one folder per job (+ the SQLite database when no job_store is set); shared storage on a cluster
    job_store: str | None = None  # postgresql://... for a cluster; None: $<job_store_env>, else SQLite in data_dir
    job_store_env: str = "POSE_JOB_STORE_URL"  # read on each replica's node (a Secret in Kubernetes)
    max_active: int = Field(default=2, ge=1)  # jobs processed at once
    max_queued: int = Field(default=32, ge=0)  # accepted jobs waiting beyond those; then 429
    retention_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)  # finished jobs kept this long; None: forever
    max_attempts: int = Field(default=3, ge=1)  # starts of one job (restarts included) before it fails
    chunk_size: int = Field(default=8, ge=1, le=256)  # frames decoded and submitted together
    video_limits: VideoLimitArgs = Field(default_factory=VideoLimitArgs)
    max_disk_bytes: int | None = Field(default=None, ge=0)  # uploads, checkpoints, results, artifacts; None: no budget
    min_free_disk_bytes: int = Field(default=512 * 2**20, ge=0)  # kept free on the data folder's file system
    poll_interval_s: float = Field(default=1.0, gt=0)  # queue check when no one wakes the worker
    callback_timeout_s: float = Field(default=5.0, gt=0)
    callback_tries: int = Field(default=3, ge=1, le=10)  # tries per callback, with back-off (4xx answers end them)
    callback_allow_http: bool = False  # plain http callback URLs (https only by default)
    callback_allow_hosts: tuple[str, ...] = ()  # hosts / addresses / CIDR ranges callbacks may reach although internal
    callback_secret_env: str = "POSE_CALLBACK_SECRET"  # shared HMAC key of X-Pose-Signature, for clients without their own
    # client_id:secret entries (also from the file in $POSE_CALLBACK_SECRETS_FILE), read at each callback on its node
    callback_secrets_env: str = "POSE_CALLBACK_SECRETS"
    lease_s: float = Field(default=30.0, gt=0)  # a running job whose attempt stops renewing this long is taken over
    max_stage_wait_s: float = Field(default=120.0, gt=0)  # stage failures in a row retried this long, then the job fails
    # One chunk's detector and regressor answers are awaited this long, then its calls are
    # cancelled and the chunk is retried (a call can wait forever on a replica lost with its node).
    stage_timeout_s: float = Field(default=600.0, gt=0)

    def callback_policy(self, client: str | None = None) -> CallbackPolicy:
        """Which callback URLs are allowed and how they are called (see `pipeline.callbacks`):
        signed with ``client``'s own secret, so no other client can forge it, else the shared one.
        Without ``client`` (the Ingress checking a URL at upload) per-client secrets are not read.

        Raises `PoseError` ``callback_secrets_invalid`` when the secrets that should sign do not parse."""
        sources = SecretSources(secrets_env=self.callback_secrets_env, secret_env=self.callback_secret_env)
        return CallbackPolicy(
            allow_http=self.callback_allow_http,
            allow_hosts=tuple(self.callback_allow_hosts),
            secret=sources.secret_for(client),
            timeout_s=self.callback_timeout_s,
            tries=self.callback_tries,
        )

    def store_url(self) -> str | None:
        return self.job_store or os.environ.get(self.job_store_env) or None

    def open_store(self) -> JobStore:
        """The job store, checked against where it is used: a node-local store (SQLite) on a
        cluster of several nodes fails here, loudly, rather than split the jobs per node.

        A data folder that cannot be used (read-only, not a folder, gone) is `data_dir_unavailable`
        (503): the replicas start anyway, video jobs answer that code, images keep working, and
        the store is opened again once the folder is usable."""
        try:
            return self._open_store()
        except (OSError, sqlite3.Error) as exc:
            raise PoseError(
                "data_dir_unavailable",
                f"video jobs are disabled: the data folder {self.data_dir} cannot be used "
                f"({type(exc).__name__}: {exc}); images keep working",
                status=503,
            ) from exc

    def _open_store(self) -> JobStore:
        store = JobStore(
            Path(self.data_dir).expanduser(),
            retention_s=self.retention_s,
            max_active=self.max_active,
            max_queued=self.max_queued,
            url=self.store_url(),
        )
        nodes = alive_nodes()
        if store.node_local and nodes > 1:
            store.close()
            raise PoseError(
                "job_store_node_local",
                f"job store is node-local; configure job_store for a cluster (the Ray cluster has {nodes} nodes: "
                f"set jobs.job_store or ${self.job_store_env} to a postgresql:// URL and data_dir to shared storage)",
                status=500,
            )
        return store


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> int:
    """Alive nodes of the connected Ray cluster (1 without one)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for n in ray.nodes() if n.get("Alive"))


VIDEO_WORK_DIR = "work"  # segments of the result being written, inside the job folder
TRANSIENT_CODES = ("stage_unavailable", "overloaded", "stage_timeout")


class RemoteStages:
    """`pipeline.video_loop.FrameStages` over the Detector and MeshRegressor deployments.

    Used from the job's worker thread: ``.remote()`` and ``.result()`` are Serve's blocking
    handle API, which runs outside the replica's event loop."""

    def __init__(self, detector: DeploymentHandle, regressor: DeploymentHandle, timeout_s: float = 600.0) -> None:
        self.detector = detector
        self.regressor = regressor
        self.timeout_s = timeout_s

    def submit(self, chunk: FrameChunk) -> "ChunkCalls":
        import ray

        detections, regressions = [], []
        for frame in chunk.frames:
            ref = ray.put(frame)
            detections.append(self.detector.detect_for_video.remote(ref))
            regressions.append(self.regressor.regress_video.remote(ref, detections[-1]))
        return ChunkCalls(detections, regressions, self.timeout_s)

    def transient(self, exc: BaseException) -> PoseError | None:
        mapped = as_pose_error(exc)
        return mapped if mapped is not None and mapped.code in TRANSIENT_CODES else None


class ChunkCalls:
    """The Serve calls of one chunk: awaited under one deadline (past it: ``TimeoutError``, a
    transient ``stage_timeout``) and cancelled together when any fails or the loop drops them,
    so no call is left retrying against a replica that is gone."""

    def __init__(self, detections: list[Any], regressions: list[Any], timeout_s: float) -> None:
        self.calls = [*detections, *regressions]
        self.regressions = regressions
        self.timeout_s = timeout_s

    def __call__(self) -> list[Any]:
        deadline = time.monotonic() + self.timeout_s
        try:
            return [r.result(timeout_s=max(0.0, deadline - time.monotonic())) for r in self.regressions]
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Never raises: Serve's ``cancel()`` re-raises the failure of a call that already failed
        (its replica died), and such a call needs no cancelling."""
        for call in self.calls:
            try:
                call.cancel()
            except Exception:  # noqa: BLE001 - the call has already ended
                pass


@serve.deployment(name="VideoPipeline", num_replicas=1, max_ongoing_requests=256, health_check_period_s=10)
class VideoPipeline:
    """A video worker; its methods only nudge the background loop (`wake`, `cancel`)."""

    def __init__(
        self,
        detector: DeploymentHandle,
        regressor: DeploymentHandle,
        settings: JobSettings,
        models: ModelSettings,
    ) -> None:
        from pipeline.models.phalp.loading import load_appearance_and_tracking
        from pipeline.video_loop import VideoLoop

        self.settings = settings
        self.models = models
        self.limits = settings.video_limits.limits()
        self._overlay: Any = None  # the overlay renderer, built by the first job that asks for one
        self._overlay_lock = threading.Lock()
        started = time.perf_counter()
        appearance, tracker_models = load_appearance_and_tracking(
            models.roots(), device=models.device, download=models.download
        )
        self.loop = VideoLoop(
            RemoteStages(detector, regressor, settings.stage_timeout_s), appearance, tracker_models,
            chunk_size=settings.chunk_size, limits=self.limits, max_stage_wait_s=settings.max_stage_wait_s,
        )
        self.start = start_info(time.perf_counter() - started)
        self.store: JobStore | None = None
        self.store_error: PoseError | None = None
        for job_id in self._open_store() or []:
            self._schedule_callback(job_id)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._tokens: dict[str, int] = {}  # job id -> attempt this replica runs
        self._delete_when_stopped: set[str] = set()
        self._wake = asyncio.Event()
        self._last_purge = 0.0
        self._loop_beat = time.monotonic()
        self._stopping = False  # set when Serve stops the replica: the loop claims nothing more
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
        if task is None and delete and self.store is not None:
            await asyncio.to_thread(self._delete_if_finished, job_id)

    async def ready(self) -> bool:
        return not self._loop_task.done()

    def _open_store(self) -> list[str] | None:
        """Open the store and recover after a restart: the jobs that recovery ended (their
        callbacks are due), or None on an unusable data folder; the worker then waits (the
        Ingress refuses video jobs meanwhile) and tries again each poll."""
        try:
            self.store = self.settings.open_store()
        except PoseError as exc:
            if exc.code != "data_dir_unavailable":
                raise
            if self.store_error is None:
                logger.error("%s", exc.message)
            self.store_error = exc
            return None
        self.store_error = None
        # Jobs of other workers come back only through their expired leases (`expire_leases`).
        report = self.store.recover_after_restart(self.settings.max_attempts, requeue_running=False)
        logger.info(
            "VideoPipeline up on %s: requeued %d, failed %d, cancelled %d jobs after restart",
            self.settings.data_dir, len(report.requeued), len(report.failed), len(report.cancelled),
        )
        return report.failed + report.cancelled

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (see `deployments.autoscaling`): the store's queue
        and the jobs this replica runs."""
        from .autoscaling import JOBS_QUEUED, JOBS_RUNNING

        counts = await asyncio.to_thread(self.store.counts) if self.store is not None else {}
        return {JOBS_QUEUED: float(counts.get("queued", 0)), JOBS_RUNNING: float(len(self._active))}

    def __del__(self) -> None:
        """Serve stops this replica (scale-down, redeploy): hand its jobs back to the queue at
        once, so another worker resumes them from their checkpoints instead of waiting for the
        lease to run out; their threads stop at their next write (the token is then stale)."""
        self._stopping = True
        store = getattr(self, "store", None)
        for job_id, token in list(getattr(self, "_tokens", {}).items()):
            with contextlib.suppress(Exception):
                store.release(job_id, token)
                logger.info("job %s handed back to the queue (attempt %d)", job_id, token)

    async def info(self) -> dict[str, Any]:
        return {
            "active_jobs": sorted(self._active),
            "max_active": self.settings.max_active,
            "max_queued": self.settings.max_queued,
            "chunk_size": self.settings.chunk_size,
            "worker_alive": not self._loop_task.done(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "node_id": _node_id(),
            "job_store": redact(self.store.url) if self.store is not None else None,
            "job_store_shared": None if self.store is None else not self.store.node_local,
            "store_error": None if self.store_error is None else self.store_error.to_dict()["error"],
            "start": self.start,
        }

    # -- the worker --------------------------------------------------------------------------
    async def check_health(self) -> None:
        """Serve's health check: the worker loop runs and has gone round recently (a loop stuck
        in a store call fails it, and Serve replaces the replica; its jobs' leases run out)."""
        if self._loop_task.done():
            raise RuntimeError("the video worker loop has stopped")
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
                        self._schedule_callback(job_id)
                await self._claim_jobs()
                if time.time() - self._last_purge > 600:
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
        expired = await asyncio.to_thread(self.store.expire_leases, self.settings.max_attempts)
        for job_id in expired.failed + expired.cancelled:
            self._schedule_callback(job_id)
        while len(self._active) < self.settings.max_active:
            job = await asyncio.to_thread(self.store.claim_next, self.settings.lease_s, limit_running=False)
            if job is None:
                return
            where = "from its checkpoint at frame %d" % job.checkpoint["next_frame"] if job.checkpoint else "from the start"
            logger.info("job %s claimed (attempt %d), %s", job.id, job.attempts, where)
            self._active[job.id] = asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        """One attempt of a job to its end state (or until a newer attempt owns it); never raises."""
        token = job.attempts
        self._tokens[job.id] = token
        beat = asyncio.get_running_loop().create_task(self._heartbeat(job.id, token))
        superseded = False
        try:
            names = await asyncio.to_thread(self._process, job, token)
            await asyncio.to_thread(self.store.finish, job.id, names, token)
            logger.info("job %s succeeded (attempt %d)", job.id, token)
            await asyncio.to_thread(self._clean_after_finish, job.id, names)
        except _Cancelled:
            with contextlib.suppress(PoseError):
                await asyncio.to_thread(self.store.mark_cancelled, job.id, token)
            logger.info("job %s cancelled", job.id)
        except Exception as exc:
            err = _as_job_error(exc)
            if err.code in ("attempt_superseded", "job_state_conflict"):  # another attempt owns it, or it was handed back
                superseded = True
                logger.warning("job %s: attempt %d stops, %s", job.id, token, err.message)
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
        if job.id in self._delete_when_stopped:
            await asyncio.to_thread(self._delete_if_finished, job.id)
        elif job.callback_url:
            self._schedule_callback(job.id)

    def _record_failure(self, job_id: str, token: int, err: PoseError) -> None:
        """Record the failure, retrying a failing store (disk full, database away) for up to a
        lease; past that the job's lease runs out and the next attempt records or redoes it."""
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

    async def _heartbeat(self, job_id: str, token: int) -> None:
        """Renew the attempt's lease while a long chunk runs (checkpoints renew it too)."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                await asyncio.to_thread(self.store.heartbeat, job_id, token, self.settings.lease_s)
            except PoseError:
                return
            except Exception:
                logger.exception("job %s: heartbeat failed", job_id)

    def _process(self, job: Job, token: int) -> dict[str, str]:
        """Run (or resume) the job in this thread; write its result files; their names."""
        from pipeline.schema import MODEL_NAMES
        from pipeline.tracking.state import load_state

        if job.input_path is None:
            raise PoseError("input_missing", "the job has no input video")
        job_dir = self.store.job_dir(job.id)
        vertices = bool(job.options.get("vertices", False))
        resume = None
        if job.checkpoint:
            try:
                resume = load_state(job_dir / job.checkpoint["file"])
            except PoseError as exc:  # the file is gone or damaged: the result is deterministic, start over
                logger.warning("job %s: checkpoint %s unreadable (%s); starting from the first frame",
                               job.id, job.checkpoint["file"], exc)
        committed = {"file": None if resume is None else job.checkpoint["file"]}
        resumed_from = int(job.checkpoint["next_frame"]) if resume is not None else 0
        started = time.perf_counter()

        def on_chunk(state: dict[str, Any], done: int, total: int | None, timings: dict[str, float]) -> None:
            name = f"checkpoint-a{token}-{int(state['chunks']):06d}.npz"
            _save_checkpoint(state, job_dir / name)
            timings = {**timings, "total_s": time.perf_counter() - started}
            self.store.save_checkpoint(
                job.id, token,
                {"file": name, "next_frame": done, "chunks": int(state["chunks"]), "resumed_from": resumed_from},
                done, total, timings, self.settings.lease_s,
            )
            previous, committed["file"] = committed["file"], name
            if previous and previous != name:
                with contextlib.suppress(FileNotFoundError):
                    (job_dir / previous).unlink()

        def should_stop() -> bool:
            return self.store.is_cancelled(job.id)

        def on_start(total: int | None) -> None:  # frames_total shown from the start
            self.store.update_progress(job.id, resumed_from, total, token=token)

        try:
            done = self.loop.run(
                job.input_path, job_dir / VIDEO_WORK_DIR, token=token, vertices=vertices,
                resume=resume, on_chunk=on_chunk, should_stop=should_stop, on_start=on_start,
            )
        except PoseError as exc:
            if exc.code == "cancelled":
                raise _Cancelled() from None
            raise
        if done.resumed_from:
            logger.info("job %s: attempt %d resumed at frame %d", job.id, token, done.resumed_from)
        names = done.writer.finalize(job_dir, done.meta, dict(MODEL_NAMES), suffix=f"a{token}")
        if job.options.get("render"):
            names["overlay"] = self._render_overlay(job, job_dir / names["jsonl"], job_dir / names["meta"], token)
        return names

    def _render_overlay(self, job: Job, jsonl: Path, meta: Path, token: int) -> str:
        """The overlay MP4 of the finalized result, written atomically beside it; its name."""
        from pipeline.export.source import ResultFiles
        from pipeline.render import OverlayRenderer, render_video

        with self._overlay_lock:
            if self._overlay is None:
                self._overlay = OverlayRenderer.from_cache(
                    self.models.roots(), device=self.models.device, download=self.models.download
                )
        name = f"overlay-a{token}.mp4"
        started = time.perf_counter()
        try:
            render_video(job.input_path, ResultFiles(jsonl, meta), self.store.job_dir(job.id) / name, self._overlay,
                         limits=self.limits, chunk_size=self.settings.chunk_size,
                         should_stop=lambda: self.store.is_cancelled(job.id))
        except PoseError as exc:
            if exc.code == "cancelled":
                raise _Cancelled() from None
            raise
        logger.info("job %s: overlay rendered in %.1f s", job.id, time.perf_counter() - started)
        return name

    def _clean_after_finish(self, job_id: str, names: dict[str, str]) -> None:
        """The published files stay; segments, checkpoints and earlier attempts' files go."""
        import shutil

        job_dir = self.store.job_dir(job_id)
        shutil.rmtree(job_dir / VIDEO_WORK_DIR, ignore_errors=True)
        keep = set(names.values())
        for path in job_dir.iterdir():
            if path.is_file() and path.name.startswith(("checkpoint-", "result", "overlay")) and path.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _delete_if_finished(self, job_id: str) -> None:
        with contextlib.suppress(PoseError):
            self.store.delete(job_id)
            self._delete_when_stopped.discard(job_id)

    # -- callbacks ---------------------------------------------------------------------------
    def _schedule_callback(self, job_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            asyncio.get_running_loop().create_task(asyncio.to_thread(self._callback, job_id))

    def _callback(self, job_id: str) -> None:
        """POST the job's status to its callback URL (signed, checked, a few tries); a failure
        is logged, the job stands."""
        from pipeline.callbacks import post

        try:
            job = self.store.get(job_id)
        except PoseError:
            return
        if not job.callback_url:
            return
        status = job.to_dict()
        for private in ("callback_url", "idempotency_key"):  # the receiver knows them; a log of it need not
            status.pop(private, None)
        body = json.dumps({"event": "job." + job.state, "job": status}).encode()
        try:
            answer = post(job.callback_url, body, self.settings.callback_policy(job.client))
            logger.info("job %s: callback answered %s", job_id, answer)
        except Exception as exc:  # refused now, bad secrets, network or HTTP failure: logged, the job's state stands
            logger.warning("job %s: callback failed: %s", job_id, exc)


class _Cancelled(Exception):
    """The job was cancelled between chunks."""


def _save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """The loop's state as one uncompressed .npz, atomically (written every chunk: no zlib)."""
    from pipeline.tracking.state import save_state

    tmp = path.with_name("." + path.name + ".tmp")
    save_state(state, tmp, compress=False)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _as_job_error(exc: BaseException) -> PoseError:
    exc = unwrap_error(exc)
    if isinstance(exc, PoseError):
        return exc
    mapped = as_pose_error(exc)
    if mapped is not None:
        return mapped
    return PoseError("internal_error", f"unexpected error while processing the video: {type(exc).__name__}", status=500)
