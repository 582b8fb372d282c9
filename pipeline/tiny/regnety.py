"""Tiny RegNetY Mask R-CNN: the real architecture at `regnety_tiny` sizes, written as a detectron2
model-zoo pickle at the official checkpoint path, so the real loader reads it and the ``regnety``
detector runs on tiny caches.

The weights are seeded random convolutions (scaled by fan-in) whose BatchNorm statistics are
measured on drawn test figures (`pipeline.tiny.vitdet.draw_figures`), so activations stay of
order one; the person score is then fitted: a least-squares linear read-out of the box head's
features that is high on proposals covering a drawn figure and low elsewhere, and the other 79
classes are switched off. The RPN's anchor deltas are constant, so every proposal is an upright
box of a standing figure's shape; box deltas are zero (boxes are the proposals) and the person
mask is the whole box. It finds drawn figures roughly at best; it proves the plumbing, never
accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.detection.predictor import PERSON_CLASS
from ..models.detection.roi_heads import POOL_LEVELS
from ..models.regnety.config import regnety_tiny
from ..models.regnety.files import CHECKPOINT_PATH
from ..models.regnety.model import RegNetYModel
from ..models.regnety.predictor import RegNetYPredictor
from ..weights import CacheRoots
from .vitdet import draw_figures, figure_box

_OTHER_CLASS_LOGIT = -10.0
_PERSON_TARGET = 8.0  # fitted person logit on a figure's proposals, minus this elsewhere
_POSITIVE_IOU = 0.6  # a proposal covering a figure at least this well is a positive
_NEGATIVE_IOU = 0.3  # below this with every figure: a negative (in between: not fitted)
_CALIBRATION: tuple[list[int], ...] = ([130, 330, 510], [160, 450], [100, 300, 520], [])  # the last: a blank frame
_CALIBRATION_SIZE = 400  # short edge of the calibration frames (the model's default: 800)
_ANCHOR_ASPECT = 4.2  # height / width of every proposal: a standing figure's shape


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def _random_init(model: RegNetYModel, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                weight = module.weight
                fan_in = weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) else weight.shape[0]
                weight.copy_(torch.randn(weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _frames() -> list[np.ndarray]:
    noise = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    return [draw_figures(xs) for xs in _CALIBRATION] + [noise]


def _upright_proposals(model: RegNetYModel) -> None:
    """Constant anchor deltas: every anchor becomes an upright figure-shaped box of its area."""
    cfg = model.cfg
    head = model.proposal_generator.rpn_head
    with torch.no_grad():
        bias = head.anchor_deltas.bias
        assert bias is not None
        head.anchor_deltas.weight.zero_()
        bias.zero_()
        for a, ratio in enumerate(cfg.anchor_ratios):
            # anchor (w, h) = (s / sqrt(r), s sqrt(r)) -> (s / sqrt(A), s sqrt(A))
            bias[4 * a + 2] = 0.5 * float(np.log(ratio / _ANCHOR_ASPECT))
            bias[4 * a + 3] = 0.5 * float(np.log(_ANCHOR_ASPECT / ratio))


def _calibrate_norms(model: RegNetYModel, predictor: RegNetYPredictor) -> None:
    """Every BatchNorm's running statistics := the mean and variance of its input on the
    calibration frames (batch statistics in train mode, accumulated as a plain average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        batch, sizes = predictor.preprocess(_frames())
        model(batch, sizes, score_thresh=1.0, masks=True)
    model.eval()
    for m in norms:
        m.momentum = 0.1


def _fit_person(model: RegNetYModel, predictor: RegNetYPredictor) -> None:
    """Least-squares person logit on the box head's features of every proposal."""
    features, targets = [], []
    with torch.no_grad():
        for xs, frame in zip([*_CALIBRATION, []], _frames()):
            batch, sizes = predictor.preprocess([frame])
            maps = model.backbone(batch)
            proposals = model.proposal_generator(maps, sizes)[0][0]
            out = model.roi_heads.boxes([maps[n] for n in POOL_LEVELS], [proposals])
            truth = torch.from_numpy(np.stack([figure_box(x) for x in xs] or [np.zeros(4, np.float32)]))
            scale = torch.tensor([sizes[0][1] / frame.shape[1], sizes[0][0] / frame.shape[0]] * 2)
            best = _iou(proposals, truth * scale).max(dim=1).values
            keep = (best >= _POSITIVE_IOU) | (best < _NEGATIVE_IOU)
            features.append(out.head_out[keep].double())
            targets.append(torch.where(best[keep] >= _POSITIVE_IOU, _PERSON_TARGET, -_PERSON_TARGET).double())
    x = torch.cat(features)
    y = torch.cat(targets)
    positives = (y > 0).double()
    # balance the few positives against the many negatives
    weight = torch.where(y > 0, len(y) / (2 * positives.sum().clamp(min=1)), len(y) / (2 * (1 - positives).sum().clamp(min=1)))
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    ridge = 1.0 * torch.eye(x1.shape[1], dtype=x.dtype)
    ridge[-1, -1] = 0.0
    solution = torch.linalg.solve(x1.T @ (weight[:, None] * x1) + ridge, x1.T @ (weight * y))
    predictor_layer = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor_layer.cls_score.weight.zero_()
        predictor_layer.cls_score.bias.fill_(_OTHER_CLASS_LOGIT)
        predictor_layer.cls_score.bias[-1] = 0.0  # background
        predictor_layer.cls_score.weight[PERSON_CLASS] = solution[:-1].float()
        predictor_layer.cls_score.bias[PERSON_CLASS] = float(solution[-1])


def build_tiny_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny model's weights as ``{name: float32 ndarray}`` in the checkpoint's key order
    (``num_batches_tracked`` as a 0-d float, as in the published files)."""
    torch.manual_seed(seed)
    model = RegNetYModel(regnety_tiny())
    _random_init(model, seed)
    _upright_proposals(model)
    with torch.no_grad():
        head = model.roi_heads
        head.box_predictor.bbox_pred.weight.zero_()
        head.box_predictor.bbox_pred.bias.zero_()
        # person mask = the whole box; other classes' masks are off
        mask_bias = head.mask_head.predictor.bias
        assert mask_bias is not None
        head.mask_head.predictor.weight.zero_()
        mask_bias.fill_(_OTHER_CLASS_LOGIT)
        mask_bias[PERSON_CLASS] = 1.0
    # calibrated at half the input size: a few seconds instead of half a minute
    predictor = RegNetYPredictor(model, device="cpu", input_size=_CALIBRATION_SIZE)
    _calibrate_norms(model, predictor)
    _fit_person(model, predictor)
    return {name: value.detach().numpy().astype(np.float32, copy=True) for name, value in model.state_dict().items()}


def write_tiny_regnety(roots: CacheRoots, seed: int = 0) -> list[Path]:
    """Write the tiny checkpoint at the official model-zoo path under ``roots.detectron2``."""
    path = roots.detectron2 / CHECKPOINT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": build_tiny_state(seed), "__author__": "Detectron2 Model Zoo"}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(payload, fh, protocol=4)
    tmp.replace(path)
    return [path]
