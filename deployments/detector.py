"""``Detector``: person detection (ViTDet-H, or RegNetY-4GF with ``detector: regnety``), images
from concurrent requests batched together."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from ray import serve

from pipeline.models.detectors import detector_model_id
from pipeline.models.vitdet.predictor import Detections
from service.settings import ModelSettings

from .batching import BatchConfig, BatchStats
from .common import checksums, route_logs_to_serve, start_info
from .metrics import StageMetrics

logger = logging.getLogger(__name__)


class DetectorSettings(ModelSettings):
    score_thresh: float = 0.5  # person score kept
    stage_score_thresh: float | None = None  # ViTDet: per cascade stage (None: 0.25)
    input_size: int | None = None  # ViTDet: resize/pad side; None: the checkpoint's (1024)
    post_nms_topk: int | None = None  # ViTDet: RPN proposals kept per image; None: the checkpoint's (1000)

    def predictor_options(self) -> dict[str, Any]:
        """The ``from_cache`` keywords of the chosen detector (RegNetY takes only the threshold)."""
        options: dict[str, Any] = {
            "device": self.device, "dtype": self.effective_dtype, "download": self.download, "score_thresh": self.score_thresh,
        }
        if self.detector == "vitdet":
            vitdet = {"stage_score_thresh": self.stage_score_thresh, "input_size": self.input_size, "post_nms_topk": self.post_nms_topk}
            options.update({k: v for k, v in vitdet.items() if v is not None})
        return options


@serve.deployment(name="Detector", max_ongoing_requests=16, health_check_period_s=10)
class Detector:
    """Loads the predictor once per replica; ``detect`` answers one image, batched across callers."""

    def __init__(self, settings: DetectorSettings) -> None:
        route_logs_to_serve()
        from pipeline.models.detectors import load_detector
        from pipeline.weights import catalog

        self.settings = settings
        self.roots = settings.roots()
        started = time.perf_counter()
        self.predictor: Any = load_detector(settings.detector, self.roots, **settings.predictor_options())
        self._files = catalog([settings.detector])
        self._checksums: dict[str, Any] | None = None
        self.batch_config = BatchConfig(max_batch_size=4, batch_wait_timeout_s=0.01)
        self.stats = BatchStats()
        self.metrics = StageMetrics()
        self.start = start_info(time.perf_counter() - started)
        logger.info(
            "Detector (%s) ready on %s (%s, profile %s) in %.1f s",
            settings.detector, self.predictor.device, self.predictor.dtype, settings.profile, time.perf_counter() - started,
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
            "model": self.settings.detector,
            "model_id": detector_model_id(self.settings.detector),
            "device": str(self.predictor.device),
            "dtype": self.settings.effective_dtype,
            "score_thresh": self.predictor.score_thresh,
            **{
                name: getattr(self.predictor, name)
                for name in ("stage_score_thresh", "nms_thresh", "input_size", "post_nms_topk")
                if hasattr(self.predictor, name)
            },
            "files": self._checksums,
            "batching": {**self.batch_config.model_dump(), **self.stats.to_dict()},
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "start": self.start,
        }


def _nbytes(det: Detections) -> int:
    """Array bytes of one answer (what crosses to the caller, serialisation aside)."""
    return int(sum(a.nbytes for a in (det.boxes, det.scores, det.classes, det.masks, det.mask_probs) if a is not None))
