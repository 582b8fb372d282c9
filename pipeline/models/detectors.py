"""The person detectors, chosen by name (``vitdet`` | ``regnety``), as 4D-Humans' ``demo.py
--detector`` chooses them.

Both predictors take the same BGR images and give the same `Detections` (people only, boxes in
the original frame, sorted by score), so the image path, the video loop and the served
Detector hold "a detector" and never branch on which. Only this table names the classes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from configs.profiles import DETECTOR_NAMES, DetectorName

from ..errors import InputError
from ..weights import CacheRoots

__all__ = ["DETECTOR_NAMES", "DetectorName", "PersonDetector", "check_detector", "detector_model_id", "load_detector"]


class PersonDetector(Protocol):
    """What every detector's predictor offers (`VitDetPredictor`, `RegNetYPredictor`)."""

    device: torch.device
    score_thresh: float

    def __call__(self, images: list[np.ndarray] | np.ndarray, *, masks: bool | Literal["probs"] = False) -> list[Any]: ...


@dataclass(frozen=True)
class DetectorSpec:
    model_id: str  # the result documents' ``models.detector``
    module: str  # package under pipeline.models holding ``predictor`` and ``files``
    predictor: str  # class name in ``<module>.predictor``


_SPECS: dict[str, DetectorSpec] = {
    "vitdet": DetectorSpec("vitdet_h_cascade", "pipeline.models.vitdet", "VitDetPredictor"),
    "regnety": DetectorSpec("regnety_4gf_mask_rcnn", "pipeline.models.regnety", "RegNetYPredictor"),
}


def check_detector(name: str) -> DetectorName:
    """``name`` if it is a detector, else `detector_unknown` (422)."""
    if name not in DETECTOR_NAMES:
        raise InputError("detector_unknown", f"expected a detector in {list(DETECTOR_NAMES)}, got {name!r}", status=422)
    return name


def detector_model_id(name: str) -> str:
    """The name results give the detector (``vitdet_h_cascade``, ``regnety_4gf_mask_rcnn``)."""
    return _SPECS[check_detector(name)].model_id


def detector_class(name: str) -> Any:
    spec = _SPECS[check_detector(name)]
    return getattr(importlib.import_module(f"{spec.module}.predictor"), spec.predictor)


def load_detector(name: str, roots: CacheRoots, **options: Any) -> PersonDetector:
    """The named detector from the caches: ``options`` are its ``from_cache`` keywords (device,
    dtype, download, thresholds; `configs.profiles.Profile.detector_settings`)."""
    return detector_class(name).from_cache(roots, **options)
