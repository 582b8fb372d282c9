"""One image in process: detect people (unless boxes are given), recover their meshes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .imageio import load_image
from .models.hmr2.predictor import HMR2Predictor, validate_boxes
from .schema import ImageInfo, ImageResult, models_used, people_from_outputs
from .weights import CacheRoots

logger = logging.getLogger(__name__)


def run_image(
    photo: str | Path,
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    roots: CacheRoots | None = None,
    device: str | None = None,
    dtype: str = "float32",
    download: bool = True,
    vertices: bool = False,
    detector: str = "vitdet",
    detector_options: Mapping[str, Any] | None = None,
    max_people: int | None = None,
) -> dict[str, Any]:
    """The result document (`ImageResult` as JSON-able dict) for an image file.

    ``detector``: ``vitdet`` or ``regnety`` (`pipeline.models.detectors`); ``detector_options``:
    further arguments of its ``from_cache`` (thresholds; ViTDet's ``input_size``,
    ``post_nms_topk``), e.g. a serving profile's, to match the service.
    ``max_people``: detections beyond this (lowest scores) are not regressed, as the served
    MeshRegressor does (`configs.profiles.Limits.max_people`); None: all of them."""
    roots = roots or CacheRoots.from_env()
    image = load_image(photo)
    scores = None
    models = models_used("mesh")
    if boxes is None:
        from .models.detectors import load_detector

        predictor = load_detector(
            detector, roots, device=device, dtype=dtype, download=download, **dict(detector_options or {})
        )
        detections = predictor([image])[0]
        if max_people is not None and len(detections) > max_people:
            detections = detections.select(np.arange(max_people))
        box_array, scores = detections.boxes, detections.scores
        models = models_used("detector", "mesh", detector=detector)
        logger.info("detected %d people", len(box_array))
        if not len(box_array):
            from .tiny import TINY_NOTE, is_tiny_detector

            if is_tiny_detector(predictor):
                logger.warning("no one found: %s", TINY_NOTE)
    else:
        box_array = validate_boxes(boxes, image.shape[:2], allow_empty=False)
    hmr2 = HMR2Predictor.from_cache(roots, device=device, dtype=dtype, download=download)
    out = hmr2.predict(image, np.asarray(box_array, dtype=np.float32).reshape(-1, 4), vertices=vertices)
    result = ImageResult(
        image=ImageInfo(width=image.shape[1], height=image.shape[0]),
        people=people_from_outputs(out, scores=scores, vertices=vertices),
        models=models,
    )
    return result.model_dump(mode="json")
