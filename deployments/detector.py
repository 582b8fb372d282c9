"""``Detector``: ViTDet person detection, images from concurrent requests batched together."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from ray import serve

from pipeline.models.vitdet.predictor import Detections
from service.settings import ModelSettings

from .batching import BatchConfig, BatchStats
from .common import checksums, start_info
from .metrics import StageMetrics

logger = logging.getLogger(__name__)


class DetectorSettings(ModelSettings):
    score_thresh: float = 0.5  # person score kept
    stage_score_thresh: float = 0.25  # per cascade stage
    input_size: int | None = None  # resize/pad side; None: the checkpoint's (1024)
    post_nms_topk: int | None = None  # RPN proposals kept per image; None: the checkpoint's (1000)


@serve.deployment(name="Detector", max_ongoing_requests=16, health_check_period_s=10)
class Detector:
    """Loads the predictor once per replica; ``detect`` answers one image, batched across callers."""

    def __init__(self, settings: DetectorSettings) -> None:
        from pipeline.models.vitdet.files import FILES
        from pipeline.models.vitdet.predictor import VitDetPredictor

        self.settings = settings
        self.roots = settings.roots()
        started = time.perf_counter()
        self.predictor = VitDetPredictor.from_cache(
            self.roots,
            device=settings.device,
            dtype=settings.effective_dtype,
            download=settings.download,
            score_thresh=settings.score_thresh,
            stage_score_thresh=settings.stage_score_thresh,
            input_size=settings.input_size,
            post_nms_topk=settings.post_nms_topk,
        )
        self._files = FILES
        self._checksums: dict[str, Any] | None = None
        self.batch_config = BatchConfig(max_batch_size=4, batch_wait_timeout_s=0.01)
        self.stats = BatchStats()
        self.metrics = StageMetrics()
        self.start = start_info(time.perf_counter() - started)
        logger.info(
            "Detector ready on %s (%s, profile %s) in %.1f s",
            self.predictor.device, self.predictor.dtype, settings.profile, time.perf_counter() - started,
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        batch = BatchConfig.model_validate(config)
        self.batch_config = batch
        self._detect_batch.set_max_batch_size(batch.max_batch_size)
        self._detect_batch.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)
        self._detect_masks_batch.set_max_batch_size(batch.max_batch_size)
        self._detect_masks_batch.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)
        logger.info("Detector batching: %s", batch.model_dump())

    async def detect(self, image: np.ndarray) -> Detections:
        """People in one BGR uint8 image: boxes xyxy in image pixels, scores, sorted by score."""
        return await self._detect_batch(image)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        started = time.perf_counter()
        out = await asyncio.to_thread(self.predictor, images)
        self.stats.record(len(images))
        self.metrics.images_per_batch.observe(len(images))
        self.metrics.observe("detect", time.perf_counter() - started)
        return out

    async def detect_for_video(self, image: np.ndarray) -> Detections:
        """As `detect`, plus the mask head's M x M probabilities per person (not full-image
        masks: the video worker pastes them where PHALP's appearance step needs them).

        A queue of its own, so image requests never pay for masks they do not use."""
        return await self._detect_masks_batch(image)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _detect_masks_batch(self, images: list[np.ndarray]) -> list[Detections]:
        started = time.perf_counter()
        out = await asyncio.to_thread(self.predictor, images, masks="probs")
        self.stats.record(len(images))
        self.metrics.images_per_batch.observe(len(images))
        self.metrics.observe("detect", time.perf_counter() - started)
        self.metrics.observe_traffic("detector_out", sum(_nbytes(d) for d in out) / max(1, len(out)))
        return out

    async def ready(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        if self._checksums is None:
            self._checksums = await asyncio.to_thread(checksums, self._files, self.roots)
        return {
            "model": "vitdet",
            "device": str(self.predictor.device),
            "dtype": self.settings.effective_dtype,
            "score_thresh": self.predictor.score_thresh,
            "stage_score_thresh": self.predictor.stage_score_thresh,
            "input_size": self.predictor.input_size,
            "post_nms_topk": self.predictor.post_nms_topk,
            "files": self._checksums,
            "batching": {**self.batch_config.model_dump(), **self.stats.to_dict()},
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "start": self.start,
        }


def _nbytes(det: Detections) -> int:
    """Array bytes of one answer (what crosses to the caller, serialisation aside)."""
    return int(sum(a.nbytes for a in (det.boxes, det.scores, det.classes, det.masks, det.mask_probs) if a is not None))
