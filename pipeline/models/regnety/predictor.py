"""Person detection on numpy images with the RegNetY-4GF Mask R-CNN, as 4D-Humans runs
detectron2's ``DefaultPredictor`` on it (``demo.py --detector regnety``): BGR ``uint8`` in,
detections in original image pixels out. The same interface as `VitDetPredictor`, so either
serves as the pipeline's detector.

Pre-processing: no colour flip (the model is BGR end to end), PIL bilinear
``ResizeShortestEdge(800, max_size=1333)``, per-channel BGR normalisation, zero padding to
multiples of 32. Post-processing (rescaling, clipping, mask pasting, the person filter) is the
shared one (`pipeline.models.detection.predictor`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ...runtime import resolve_device, resolve_dtype
from ...weights import CacheRoots, ensure
from ..detection.predictor import DetectionPredictor, normalise_and_pad, resize_shortest_edge
from .config import RegNetYConfig
from .convert import config_for, load_model, read_model_zoo
from .files import FILES
from .model import RegNetYModel

logger = logging.getLogger(__name__)


class RegNetYPredictor(DetectionPredictor):
    """Owns the model, its device and compute dtype, and the image pre/post-processing.

    Input: BGR ``uint8`` images (H, W, 3) as ``cv2.imread`` gives them; grayscale (H, W) and
    BGRA (H, W, 4) are converted. Output per image: `Detections` with boxes ``x0, y0, x1, y1``
    in original pixels. ``float16``/``bfloat16`` run under autocast on a GPU; on CPU they fall
    back to float32 with a logged warning.

    Thresholds: ``stage_score_thresh`` is the box predictor's own ``test_score_thresh`` on every
    class (0.5 as 4D-Humans sets it; the name is `VitDetPredictor`'s, whose cascade has
    stages), ``score_thresh`` the person filter applied after it (4D-Humans: 0.5). Test-time
    speed knobs, defaulting to the model's configuration: ``input_size``, the short-edge target
    (800; the long-edge cap 1333 scales with it, padding stays to multiples of 32), and
    ``post_nms_topk``, the RPN proposals kept per image (1000).
    """

    def __init__(
        self,
        model: RegNetYModel,
        *,
        device: str | None = None,
        dtype: str = "float32",
        score_thresh: float = 0.5,
        stage_score_thresh: float | None = None,
        max_batch: int = 8,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.cfg: RegNetYConfig = model.cfg
        size = self.cfg.short_edge if input_size is None else int(input_size)
        if size <= 0:
            raise ValueError(f"expected a positive input_size, got {input_size}")
        if post_nms_topk is not None:
            if int(post_nms_topk) < 1:
                raise ValueError(f"expected post_nms_topk >= 1, got {post_nms_topk}")
            self.model.proposal_generator.post_nms_topk = int(post_nms_topk)
        self.input_size = size
        # the long-edge cap keeps the configured aspect allowance (1333 / 800)
        self.max_size = int(round(self.cfg.max_size * size / self.cfg.short_edge))
        self.post_nms_topk = self.model.proposal_generator.post_nms_topk
        self.score_thresh = score_thresh
        self.stage_score_thresh = self.cfg.test_score_thresh if stage_score_thresh is None else stage_score_thresh
        self.mask_threshold = self.cfg.mask_threshold
        self.max_batch = max_batch

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, cfg: RegNetYConfig | None = None, **kwargs: object) -> "RegNetYPredictor":
        """Load a detectron2 model-zoo ``.pkl`` strictly; ``cfg`` None: the preset it fits."""
        arrays = read_model_zoo(path)
        if cfg is None:
            cfg = config_for(arrays, source=str(path))
        return cls(load_model(arrays, cfg, source=str(path)), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots,
        *,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        score_thresh: float = 0.5,
        stage_score_thresh: float | None = None,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> "RegNetYPredictor":
        """The checkpoint from detectron2's cache (downloaded when missing and ``download``);
        options as in the class docstring (None: the model's configuration)."""
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

    def resize(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        """BGR uint8 -> the resized BGR uint8 image the network sees (no colour flip)."""
        return resize_shortest_edge(image, self.input_size, self.max_size, index)

    def to_network_input(self, resized: list[np.ndarray]) -> torch.Tensor:
        """Normalised (BGR mean/std), zero-padded to multiples of ``size_divisibility``."""
        cfg = self.cfg
        return normalise_and_pad(resized, cfg.pixel_mean, cfg.pixel_std, self.device, divisibility=cfg.size_divisibility)

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """BGR uint8 images -> (B, 3, H, W) network input and the resized (h, w) of each."""
        resized = [self.resize(im, i) for i, im in enumerate(images)]
        return self.to_network_input(resized), [(r.shape[0], r.shape[1]) for r in resized]
