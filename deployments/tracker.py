"""``Tracker``: PHALP association for video jobs.

The networks (pose predictor, appearance encoder) load once per replica and are shared; each job
gets its own `pipeline.tracking.tracker.Tracker` state. Calls carry the job id as Serve's
multiplexed model id, so every frame of a job is routed to the replica that holds its tracks
(``handle.options(multiplexed_model_id=job_id).step.remote(...)``). A job's state can be taken
out (`export_state`) and put back (`import_state`) to survive a replica restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

from ray import serve

from pipeline.errors import PoseError

from .common import ModelSettings, checksums
from .metrics import StageMetrics

logger = logging.getLogger(__name__)

MAX_JOBS_PER_REPLICA = 64


class _JobTracker:
    """One job's PHALP tracker and how many frames it has stepped (to detect lost state)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.steps = 0
        self.lock = asyncio.Lock()  # a job's frames are tracked one after the other


def tracker_available(*, tiny: bool = False) -> bool:
    """Whether this installation has the PHALP tracker (and, for the tiny profile, its tiny
    factory); the graph leaves the deployment out otherwise."""
    import importlib.util

    modules = ["pipeline.tracking.tracker", "pipeline.models.phalp.loading"]
    if tiny:
        modules.append("pipeline.tiny.phalp")
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:
        return False


@serve.deployment(name="Tracker", max_ongoing_requests=32, health_check_period_s=10)
class Tracker:
    def __init__(self, settings: ModelSettings) -> None:
        from pipeline.models.phalp.loading import load_tracking_models
        from pipeline.tracking.tracker import TrackerModels

        self.settings = settings
        self.roots = settings.roots()
        started = time.perf_counter()
        pose_predictor, encoder = load_tracking_models(self.roots, device=settings.device, download=settings.download)
        self.models = TrackerModels(pose_predictor, encoder)
        self._checksums: dict[str, Any] | None = None
        self.metrics = StageMetrics()
        logger.info("Tracker ready on %s in %.1f s", settings.device, time.perf_counter() - started)

    @serve.multiplexed(max_num_models_per_replica=MAX_JOBS_PER_REPLICA)
    async def _job(self, job_id: str) -> Any:
        """A fresh tracker for a job this replica has not seen (evicted least recently used)."""
        from pipeline.tracking.tracker import Tracker as PhalpTracker

        logger.info("tracking job %s", job_id)
        return _JobTracker(PhalpTracker(self.models))

    async def step(
        self,
        frame_index: int,
        people: Sequence[Any],
        image_size: tuple[int, int],
        frames_before: int | None = None,
    ) -> Any:
        """Track one frame of the calling job (`PersonObservation` list) -> `FrameTracks`.

        ``frames_before``: how many frames the caller has already tracked for this job. A replica
        that restarted (or evicted the job) holds fresh state; continuing on it would silently
        start new tracks mid-video, so that case is an error (``tracker_state_lost``) the caller
        answers by re-running the job.
        """
        job = await self._job(serve.get_multiplexed_model_id())
        if frames_before is not None and frames_before != job.steps:
            raise PoseError(
                "tracker_state_lost",
                f"expected a tracker that has seen {frames_before} frames of this job, got one that has seen {job.steps}",
                status=503,
            )
        started = time.perf_counter()
        async with job.lock:
            out = await asyncio.to_thread(job.tracker.step, frame_index, list(people), image_size)
            job.steps += 1
        self.metrics.observe("track", time.perf_counter() - started)
        return out

    async def export_state(self) -> dict[str, Any]:
        job = await self._job(serve.get_multiplexed_model_id())
        return {"steps": job.steps, "tracker": job.tracker.state_dict()}

    async def import_state(self, state: dict[str, Any]) -> None:
        job = await self._job(serve.get_multiplexed_model_id())
        job.tracker.load_state_dict(state["tracker"])
        job.steps = int(state["steps"])

    async def ready(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        if self._checksums is None:
            from pipeline.weights import catalog

            self._checksums = await asyncio.to_thread(checksums, catalog(["phalp"]), self.roots)
        return {
            "model": "phalp",
            "device": self.settings.device,
            "files": self._checksums,
            "replica": serve.get_replica_context().replica_id.unique_id,
        }
