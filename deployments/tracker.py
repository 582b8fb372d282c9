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

from .common import ModelSettings, checksums
from .metrics import StageMetrics

logger = logging.getLogger(__name__)

MAX_JOBS_PER_REPLICA = 64


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
        return PhalpTracker(self.models)

    async def step(self, frame_index: int, people: Sequence[Any], image_size: tuple[int, int]) -> Any:
        """Track one frame of the calling job (`PersonObservation` list) -> `FrameTracks`."""
        tracker = await self._job(serve.get_multiplexed_model_id())
        started = time.perf_counter()
        out = await asyncio.to_thread(tracker.step, frame_index, list(people), image_size)
        self.metrics.observe("track", time.perf_counter() - started)
        return out

    async def export_state(self) -> dict[str, Any]:
        return (await self._job(serve.get_multiplexed_model_id())).state_dict()

    async def import_state(self, state: dict[str, Any]) -> None:
        (await self._job(serve.get_multiplexed_model_id())).load_state_dict(state)

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
