"""``MeshRegressor``: HMR2.0 on person crops. Crops from every concurrent request join one queue,
so one network forward serves many images (``@serve.batch`` over single crops; the batch size is
counted in crops, not in requests). It draws nothing: overlays are the ``Renderer``'s."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from pipeline.models.hmr2.predictor import HMR2Output
from pipeline.models.vitdet.predictor import Detections
from service.settings import ModelSettings

from .batching import BatchConfig, BatchStats
from .common import checksums, route_logs_to_serve, start_info
from .metrics import StageMetrics

logger = logging.getLogger(__name__)


@dataclass
class MeshResult:
    """HMR2 outputs for the people of one image, with their detection scores (None for client boxes)."""

    output: HMR2Output
    scores: np.ndarray | None


class RegressorSettings(ModelSettings):
    max_people: int = 64  # detections beyond this (lowest scores) are not regressed


@serve.deployment(name="MeshRegressor", max_ongoing_requests=32, health_check_period_s=10)
class MeshRegressor:
    """Loads HMR2 once per replica; ``regress`` takes one image and its people (boxes or the
    detector's answer, which may still be in flight when the call is made)."""

    def __init__(self, settings: RegressorSettings) -> None:
        route_logs_to_serve()
        from pipeline.models.hmr2.files import FILES
        from pipeline.models.hmr2.predictor import HMR2Predictor

        self.settings = settings
        self.roots = settings.roots()
        started = time.perf_counter()
        self.predictor = HMR2Predictor.from_cache(
            self.roots, device=settings.device, dtype=settings.effective_dtype, download=settings.download
        )
        self._files = FILES
        self._checksums: dict[str, Any] | None = None
        self.batch_config = BatchConfig(max_batch_size=16, batch_wait_timeout_s=0.01)
        self.stats = BatchStats()
        self.metrics = StageMetrics()
        self.start = start_info(time.perf_counter() - started)
        logger.info(
            "MeshRegressor ready on %s (%s, profile %s) in %.1f s",
            self.predictor.device, settings.effective_dtype, settings.profile, time.perf_counter() - started,
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        batch = BatchConfig.model_validate(config)
        self.batch_config = batch
        # One forward never exceeds the batch size the queue hands over.
        self.predictor.max_batch = max(self.predictor.max_batch, batch.max_batch_size)
        self._forward.set_max_batch_size(batch.max_batch_size)
        self._forward.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)
        logger.info("MeshRegressor batching: %s", batch.model_dump())

    async def regress(self, image: np.ndarray, people: Detections | np.ndarray, vertices: bool = False) -> MeshResult:
        """One BGR uint8 image and its people: `Detections` (scores kept) or (N, 4) xyxy boxes."""
        return await self._mesh(image, people, vertices)

    async def regress_video(self, image: np.ndarray, people: Detections) -> Any:
        """One video frame and its detections -> `pipeline.video.loop.FrameModels`: the HMR2
        outputs with vertices (the worker's appearance step needs them) and the detections as
        they came (boxes, scores, mask-head probabilities), so the worker needs one answer.

        The crops share the same ``@serve.batch`` queue as image requests and other jobs' frames."""
        from pipeline.video.loop import FrameModels

        result = await self._mesh(image, people, True)
        keep = len(result.output)
        detections = people.select(np.arange(keep)) if len(people) > keep else people
        answer = FrameModels(detections=detections, output=result.output)
        self.metrics.observe_traffic(
            "regressor_out",
            sum(getattr(result.output, f).nbytes for f in vars(result.output) if getattr(result.output, f) is not None),
        )
        return answer

    async def _mesh(self, image: np.ndarray, people: Detections | np.ndarray, vertices: bool) -> MeshResult:
        if isinstance(people, Detections):
            keep = min(len(people), self.settings.max_people)
            boxes, scores = people.boxes[:keep], people.scores[:keep]
        else:
            boxes, scores = np.asarray(people, dtype=np.float32).reshape(-1, 4), None
        started = time.perf_counter()
        batch = await asyncio.to_thread(self.predictor.prepare, image, boxes)
        self.metrics.observe("crop", time.perf_counter() - started)
        if len(batch):
            parts = await asyncio.gather(*(self._forward(crop) for crop in batch.img))
            raw = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
        else:
            raw = self.predictor.forward_crops(batch.img, vertices=True)
        if not vertices:
            raw.pop("pred_vertices", None)
        started = time.perf_counter()
        output = self.predictor.finish(batch, raw, boxes)
        self.metrics.observe("finish", time.perf_counter() - started)
        return MeshResult(output=output, scores=scores)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _forward(self, crops: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One network forward over person crops from any number of requests."""
        started = time.perf_counter()
        raw = await asyncio.to_thread(self.predictor.forward_crops, np.stack(crops), vertices=True)
        self.stats.record(len(crops))
        self.metrics.crops_per_batch.observe(len(crops))
        self.metrics.observe("mesh_forward", time.perf_counter() - started)
        return [{k: v[i] for k, v in raw.items()} for i in range(len(crops))]

    async def ready(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        if self._checksums is None:
            self._checksums = await asyncio.to_thread(checksums, self._files, self.roots)
        return {
            "model": "hmr2",
            "device": str(self.predictor.device),
            "dtype": self.settings.effective_dtype,
            "files": self._checksums,
            "batching": {**self.batch_config.model_dump(), **self.stats.to_dict()},
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "start": self.start,
        }
