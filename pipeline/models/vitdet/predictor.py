"""Person detection on numpy images with ViTDet-H, as 4D-Humans runs detectron2's
``DefaultPredictor`` on it: BGR ``uint8`` in, detections in original image pixels out.

Pre-processing (colour flip, PIL bilinear resize, normalisation, square padding) and
post-processing (rescaling, clipping, mask pasting, the person filter) live here; the network
(`VitDetModel`) sees only the padded square batch.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...runtime import resolve_device, resolve_dtype
from ...weights import CacheRoots, ensure
from ..checkpoint import load_strict
from ..detection.predictor import (
    PERSON_CLASS,
    DetectionPredictor,
    Detections,
    normalise_and_pad,
    paste_masks,
    postprocess,
    resize_shortest_edge,
    resized_hw,
)
from .config import VitDetConfig
from .convert import read_model_zoo, to_state_dict
from .files import FILES
from .model import VitDetModel

logger = logging.getLogger(__name__)

# the shared pieces, under the names this module has always offered
__all__ = [
    "PERSON_CLASS",
    "Detections",
    "VitDetPredictor",
    "paste_masks",
    "postprocess",
    "resize_rgb",
    "resized_hw",
    "to_network_input",
]


def resize_rgb(bgr: np.ndarray, size: int, index: int = 0) -> np.ndarray:
    """BGR -> RGB, then PIL bilinear to ``ResizeShortestEdge(size, max_size=size)``: the
    pixels detectron2 feeds ViTDet (its input format is RGB)."""
    return resize_shortest_edge(bgr[:, :, ::-1], size, size, index)


def to_network_input(resized: Sequence[np.ndarray], cfg: VitDetConfig, device: torch.device) -> torch.Tensor:
    """Normalise each (h, w, 3) RGB uint8 image with the RGB mean/std and pad bottom/right with
    zeros (after normalisation) into one (B, 3, S, S) float32 batch."""
    return normalise_and_pad(resized, cfg.pixel_mean, cfg.pixel_std, device, square=cfg.image_size)


class VitDetPredictor(DetectionPredictor):
    """Owns the model, its device and compute dtype, and the image pre/post-processing.

    Input: BGR ``uint8`` images (H, W, 3) as ``cv2.imread`` gives them; grayscale (H, W) and
    BGRA (H, W, 4) are converted. Output per image: `Detections` with boxes ``x0, y0, x1, y1``
    in original pixels. ``float16``/``bfloat16`` run under autocast on a GPU; on CPU they fall
    back to float32 with a logged warning, so one serving config starts on any machine.

    Two test-time speed knobs, both defaulting to the model's configuration (detectron2's
    behaviour): ``input_size``, the ResizeShortestEdge target, long-edge cap and square padding
    side (1024 for ViTDet-H; a positive multiple of the patch size), and ``post_nms_topk``, the
    RPN proposals kept per image (1000). Smaller values trade recall for time; the trunk's
    position tables are resized to the new grid as detectron2 does for any input size.
    """

    def __init__(
        self,
        model: VitDetModel,
        *,
        device: str | None = None,
        dtype: str = "float32",
        score_thresh: float = 0.5,
        stage_score_thresh: float = 0.25,
        max_batch: int = 8,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        size = model.cfg.image_size if input_size is None else int(input_size)
        if size <= 0 or size % model.cfg.patch_size:
            raise ValueError(f"expected input_size a positive multiple of {model.cfg.patch_size}, got {input_size}")
        if post_nms_topk is not None:
            if int(post_nms_topk) < 1:
                raise ValueError(f"expected post_nms_topk >= 1, got {post_nms_topk}")
            self.model.proposal_generator.post_nms_topk = int(post_nms_topk)
        # the network still sees ``model.cfg``; only pre-processing uses the test-time size
        self.cfg = replace(model.cfg, image_size=size)
        self.input_size = size
        self.post_nms_topk = self.model.proposal_generator.post_nms_topk
        self.score_thresh = score_thresh
        self.stage_score_thresh = stage_score_thresh
        self.max_batch = max_batch
        self.mask_threshold = self.cfg.mask_threshold

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> "VitDetPredictor":
        """Load a detectron2 model-zoo ``.pkl`` (sizes inferred from its shapes) strictly."""
        arrays = read_model_zoo(path)
        cfg = VitDetConfig.from_state_dict(arrays)
        with torch.device("meta"):  # no throw-away random init of 690 M parameters
            model = VitDetModel(cfg)
        state = to_state_dict(arrays)
        load_strict(model, state, source=str(path), assign=True)
        return cls(model, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots,
        *,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        score_thresh: float = 0.5,
        stage_score_thresh: float = 0.25,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> "VitDetPredictor":
        """The checkpoint from detectron2's cache (downloaded when missing and ``download``);
        ``input_size`` / ``post_nms_topk`` as in the class docstring (None: the config's)."""
        paths = ensure(list(FILES), roots, download=download)
        return cls.from_checkpoint(
            paths[FILES[0].key],
            device=device,
            dtype=dtype,
            score_thresh=score_thresh,
            stage_score_thresh=stage_score_thresh,
            input_size=input_size,
            post_nms_topk=post_nms_topk,
        )

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """BGR uint8 images -> (B, 3, S, S) network input and the resized (h, w) of each."""
        resized = [resize_rgb(im, self.cfg.image_size, i) for i, im in enumerate(images)]
        return to_network_input(resized, self.cfg, self.device), [r.shape[:2] for r in resized]
