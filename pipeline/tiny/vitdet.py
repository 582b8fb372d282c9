"""Tiny ViTDet: the real cascade architecture at `vitdet_tiny` sizes, random weights, written as a
detectron2 model-zoo pickle at the official checkpoint path, so the real loader reads it.

An untrained detector finds nothing on purpose, but the serving tests need "people" in ordinary
photos and in simple drawn figures, and none in a blank frame. The weights are shaped for that:

* all biases and norm offsets are zero and each patch-embedding kernel has zero mean per input
  colour, so a flat image gives (almost) constant, weak features;
* the three cascade stages share one box head; box deltas are zero (boxes = proposals);
* the person logit grows with the mean box-head activation, which is larger on textured regions;
  its offset is calibrated at write time between the strongest response on blank frames and the
  strongest on a drawn figure, so a few proposals on textured content pass 0.5 and blank frames
  give nothing;
* the mask logit of the person class is biased up so masks cover most of each box.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from ..models.vitdet.config import vitdet_tiny
from ..models.vitdet.files import CHECKPOINT_PATH
from ..models.vitdet.model import VitDetModel
from ..models.vitdet.predictor import PERSON_CLASS, VitDetPredictor
from ..models.vitdet.roi_heads import POOL_LEVELS, pool_boxes
from ..weights import CacheRoots

logger = logging.getLogger(__name__)

_PERSON_SLOPE = 80.0  # logit per unit of mean box-head activation: a sharp person/background cut
_OTHER_CLASS_LOGIT = -10.0  # keeps the 79 other classes out of the results


def calibration_figure(height: int = 480, width: int = 640) -> np.ndarray:
    """A white BGR frame with two stick figures: the "person" the tiny model must detect."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    for x in (width // 4, 5 * width // 8):
        cv2.circle(img, (x, height // 5), height // 16, (60, 40, 200), -1)
        body = (50, 50, 50)
        cv2.line(img, (x, height // 4), (x, 5 * height // 8), body, 12)
        cv2.line(img, (x, 3 * height // 8), (x - width // 10, height // 2), body, 10)
        cv2.line(img, (x, 3 * height // 8), (x + width // 10, height // 2), body, 10)
        cv2.line(img, (x, 5 * height // 8), (x - width // 12, 7 * height // 8), body, 10)
        cv2.line(img, (x, 5 * height // 8), (x + width // 12, 7 * height // 8), body, 10)
    return img


def _blank_frames() -> list[np.ndarray]:
    return [
        np.zeros((480, 640, 3), np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.full((500, 500, 3), 128, np.uint8),
    ]


def _max_head_activation(predictor: VitDetPredictor, image: np.ndarray, quantile: float = 1.0) -> float:
    """Quantile over the RPN proposals of the mean stage-0 box-head activation."""
    model = predictor.model
    with torch.inference_mode():
        batch, sizes = predictor.preprocess([image])
        feats = model.backbone(batch)
        boxes = model.proposal_generator(feats, sizes)[0][0]
        pooled = pool_boxes([feats[n] for n in POOL_LEVELS], [boxes], model.cfg.box_pool_size)
        act = model.roi_heads.box_head[0](pooled).mean(dim=1)
    return float(torch.quantile(act, quantile))


def build_tiny_state(seed: int = 0, attempts: int = 4) -> dict[str, np.ndarray]:
    """The tiny model's weights as ``{name: float32 ndarray}`` in the checkpoint's key order.

    A random draw that does not tell the figure from blank frames is redrawn (from a seed
    derived from ``seed``), so every seed gives a usable detector; the result stays deterministic.
    """
    for attempt in range(attempts):
        state, separated = _draw(seed + 100_003 * attempt)
        if separated:
            return state
    logger.warning("tiny ViTDet seed %d: blank frames respond like the figure; they may yield detections", seed)
    return state


def _draw(seed: int) -> tuple[dict[str, np.ndarray], bool]:
    cfg = vitdet_tiny()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = VitDetModel(cfg)
    finally:
        torch.random.set_rng_state(generator_state)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if name.endswith(".bias"):
                value.zero_()
        kernel = state["backbone.net.patch_embed.proj.weight"]
        kernel -= kernel.mean(dim=(2, 3), keepdim=True)
        for stage in range(1, cfg.num_stages):
            for name in state:
                for part in ("box_head", "box_predictor"):
                    prefix = f"roi_heads.{part}.{stage}."
                    if name.startswith(prefix):
                        state[name].copy_(state[f"roi_heads.{part}.0." + name[len(prefix) :]])
        for stage in range(cfg.num_stages):
            cls_w = state[f"roi_heads.box_predictor.{stage}.cls_score.weight"]
            cls_b = state[f"roi_heads.box_predictor.{stage}.cls_score.bias"]
            cls_w.zero_()
            cls_w[PERSON_CLASS] = _PERSON_SLOPE / cls_w.shape[1]
            cls_b.fill_(_OTHER_CLASS_LOGIT)
            cls_b[cfg.num_classes] = 0.0  # background
            state[f"roi_heads.box_predictor.{stage}.bbox_pred.weight"].zero_()
        state["roi_heads.mask_head.predictor.bias"][PERSON_CLASS] = 3.0

        predictor = VitDetPredictor(model, device="cpu")
        blank = max(_max_head_activation(predictor, im) for im in _blank_frames())
        figure = _max_head_activation(predictor, calibration_figure())
        separated = figure > blank
        centre = blank + 0.25 * (figure - blank) if separated else figure
        for stage in range(cfg.num_stages):
            state[f"roi_heads.box_predictor.{stage}.cls_score.bias"][PERSON_CLASS] = -_PERSON_SLOPE * centre
    arrays = {name: value.detach().numpy().astype(np.float32, copy=True) for name, value in state.items()}
    return arrays, separated


def write_tiny_vitdet(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write the tiny checkpoint at the official model-zoo path under ``roots.detectron2``."""
    path = roots.detectron2 / CHECKPOINT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": build_tiny_state(seed), "__author__": "Detectron2 Model Zoo"}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(payload, fh, protocol=4)
    tmp.replace(path)
    return [path]
