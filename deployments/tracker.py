"""``Tracker``: the video workers as a Serve deployment. Each replica runs one
`service.worker.VideoWorker` (claims jobs from the store, runs them through the one video loop,
checkpoints per chunk) with the ``Detector`` and ``MeshRegressor`` deployments as its stages:

* frames are decoded in a worker thread and put into Ray's object store once (``ray.put``); the
  Detector and the MeshRegressor both receive the reference, and the detections go from the
  Detector straight to the MeshRegressor (a response passed as an argument), never through here;
  what comes back is small: boxes, scores, mask-head probabilities, HMR2 outputs;
* chunk ``k + 1`` is submitted before chunk ``k`` is tracked; crops of all jobs share the
  MeshRegressor's batches;
* a ``render=true`` job's overlay is asked of the ``Renderer`` once the job has succeeded
  (`RemoteRenderer`), awaited on the replica's event loop, never in a job's thread.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.errors import PoseError
from pipeline.video.decode import FrameChunk, VideoLimits
from service.settings import JobSettings, ModelSettings
from service.worker import VideoWorker

from .autoscaling import JOBS_QUEUED, JOBS_RUNNING
from .common import alive_nodes, as_pose_error, route_logs_to_serve, start_info, unwrap_error
from .metrics import QueueMetrics

TRANSIENT_CODES = ("stage_unavailable", "overloaded", "stage_timeout")


class RemoteStages:
    """`pipeline.video.loop.FrameStages` over the Detector and MeshRegressor deployments.

    Used from the job's worker thread: ``.remote()`` and ``.result()`` are Serve's blocking
    handle API, which runs outside the replica's event loop."""

    def __init__(self, detector: DeploymentHandle, regressor: DeploymentHandle, timeout_s: float = 600.0) -> None:
        self.detector = detector
        self.regressor = regressor
        self.timeout_s = timeout_s

    def submit(self, chunk: FrameChunk) -> "ChunkCalls":
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


class RemoteRenderer:
    """`service.worker.OverlayStage` over the Renderer deployment (paths on the shared data folder)."""

    def __init__(self, renderer: DeploymentHandle) -> None:
        self.renderer = renderer

    async def render(self, clip: str, jsonl: str, meta: str, out: str, *, limits: VideoLimits, chunk_size: int) -> None:
        await self.renderer.render_video.remote(clip, jsonl, meta, out, limits, chunk_size)


@serve.deployment(name="Tracker", num_replicas=1, max_ongoing_requests=256, health_check_period_s=10)
class Tracker:
    """A video worker replica; its methods only nudge the worker's background loop."""

    def __init__(
        self,
        detector: DeploymentHandle,
        regressor: DeploymentHandle,
        settings: JobSettings,
        models: ModelSettings,
        renderer: DeploymentHandle | None = None,
    ) -> None:
        route_logs_to_serve()
        self.worker = VideoWorker(
            RemoteStages(detector, regressor, settings.stage_timeout_s), settings, models,
            map_error=as_pose_error, unwrap=unwrap_error, nodes=alive_nodes,
            renderer=None if renderer is None else RemoteRenderer(renderer),
            # Serve health-checks RUNNING replicas only, and kills one stopped while STARTING
            # without a graceful stop: a job it had claimed would come back as a crash.
            claim_after_health_check=True,
        )
        self.start = start_info(self.worker.load_s)
        self.queue_metrics = QueueMetrics()

    async def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""
        await self.worker.wake()

    async def ready(self) -> bool:
        return await self.worker.ready()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (see `deployments.autoscaling`): the store's queue
        and the jobs this replica runs."""
        queued, running = await self.worker.queue_stats()
        self.queue_metrics.set(queued, running)  # the same figures for Prometheus / Grafana
        return {JOBS_QUEUED: float(queued), JOBS_RUNNING: float(running)}

    def __del__(self) -> None:
        """Serve stops this replica (scale-down, redeploy): its jobs go back to the queue at once."""
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()

    async def info(self) -> dict[str, Any]:
        return {
            **await self.worker.info(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "start": self.start,
        }

    async def check_health(self) -> None:
        """Serve's health check: the worker loop runs and has gone round recently (a loop stuck
        in a store call fails it, and Serve replaces the replica; its jobs' leases run out)."""
        await self.worker.check_health()
