"""ROI pooling and the standard Mask R-CNN head parts (detectron2 ``ROIPooler``,
``FastRCNNConvFCHead``, ``FastRCNNOutputLayers``, ``fast_rcnn_inference_single_image``,
``MaskRCNNConvUpsampleHead``), test-time path only.

The heads differ between our detectors only in the norm after each 3x3 conv (LayerNorm in
ViTDet, BatchNorm in the RegNetY model), so they take a factory for the conv + norm layer,
whose child is named ``norm`` in both checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .boxes import clip_boxes

POOL_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5")
POOL_STRIDES: tuple[int, ...] = (4, 8, 16, 32)

# (in_channels, out_channels) -> 3x3 conv followed by its norm and a ReLU
ConvNormReLU = Callable[[int, int], nn.Module]


def assign_levels(boxes: torch.Tensor, canonical_size: float = 224.0, canonical_level: int = 4) -> torch.Tensor:
    """Pyramid level index (0 = p2 ... 3 = p5) per box, by the FPN paper's rule as detectron2's
    ``assign_boxes_to_levels`` writes it (the +1e-8 and floor matter at level boundaries)."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    low = int(math.log2(POOL_STRIDES[0]))
    high = int(math.log2(POOL_STRIDES[-1]))
    return (torch.clamp(levels, min=low, max=high) - low).to(torch.int64)


def pool_boxes(features: list[torch.Tensor], boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """ROIAlignV2 (aligned, adaptive sampling) of each image's boxes on its assigned level.

    ``features``: p2..p5 maps (B, C, H, W); ``boxes``: per image (Ni, 4) in the resized frame.
    Returns (sum Ni, C, size, size) in image-then-box order.
    """
    rois = torch.cat(
        [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
    )
    channels = features[0].shape[1]
    out = torch.zeros((rois.shape[0], channels, size, size), dtype=features[0].dtype, device=rois.device)
    if rois.shape[0] == 0:
        return out
    levels = assign_levels(rois[:, 1:])
    for level, (x, stride) in enumerate(zip(features, POOL_STRIDES)):
        inds = torch.nonzero(levels == level).squeeze(1)
        if inds.numel() == 0:
            continue
        # float32 whatever the autocast dtype: half-precision box corners lose up to 0.5 px
        pooled = roi_align(
            x.float(), rois[inds].float(), (size, size), spatial_scale=1.0 / stride, sampling_ratio=0, aligned=True
        )
        out[inds] = pooled.to(out.dtype)
    return out


class BoxHead(nn.Module):
    """N x (3x3 conv, norm, ReLU) named ``conv1..``, flatten, fc + ReLU named ``fc1``
    (detectron2 ``FastRCNNConvFCHead`` with one fc)."""

    def __init__(self, channels: int, conv_dims: tuple[int, ...], fc_dim: int, pool_size: int, conv: ConvNormReLU) -> None:
        super().__init__()
        self.num_convs = len(conv_dims)
        for i, dim in enumerate(conv_dims):
            self.add_module(f"conv{i + 1}", conv(channels, dim))
            channels = dim
        self.fc1 = nn.Linear(channels * pool_size**2, fc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_convs):
            x = getattr(self, f"conv{i + 1}")(x)
        return F.relu(self.fc1(torch.flatten(x, 1)))


class BoxPredictor(nn.Module):
    """Class logits (background last) and box deltas, one set for all classes or one per class
    (detectron2 ``FastRCNNOutputLayers``; ``bbox_pred`` column ``4 c + coord``)."""

    def __init__(self, fc_dim: int, num_classes: int, *, class_specific: bool) -> None:
        super().__init__()
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * num_classes if class_specific else 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """N x (3x3 conv, norm, ReLU) named ``mask_fcn1..``, 2x deconv + ReLU, 1x1 per-class logits
    (detectron2 ``MaskRCNNConvUpsampleHead``)."""

    def __init__(self, channels: int, conv_dims: tuple[int, ...], num_classes: int, conv: ConvNormReLU) -> None:
        super().__init__()
        self.num_convs = len(conv_dims)
        for i, dim in enumerate(conv_dims):
            self.add_module(f"mask_fcn{i + 1}", conv(channels, dim))
            channels = dim
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, 14, 14) pooled features -> (R, num_classes, 28, 28) mask logits."""
        for i in range(self.num_convs):
            x = getattr(self, f"mask_fcn{i + 1}")(x)
        return self.predictor(F.relu(self.deconv(x)))

    def class_probs(self, features: list[torch.Tensor], boxes: list[torch.Tensor], classes: list[torch.Tensor], pool_size: int) -> list[torch.Tensor]:
        """Per image (Ni, 28, 28) foreground probabilities of each box's own class, pooled from
        the p2..p5 ``features``."""
        pooled = pool_boxes(features, boxes, pool_size)
        logits = self(pooled).float()
        cls = torch.cat(classes)
        probs = logits[torch.arange(len(cls), device=logits.device), cls].sigmoid()
        return list(probs.split([len(b) for b in boxes]))


@dataclass
class RawDetections:
    """Final detections of one image in the resized frame, sorted by score (before paste)."""

    boxes: torch.Tensor  # (N, 4) float32
    scores: torch.Tensor  # (N,) float32
    classes: torch.Tensor  # (N,) int64
    mask_probs: torch.Tensor | None = None  # (N, 28, 28) float32


def candidates(
    boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], score_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (row, class) pair scoring strictly above ``score_thresh``, in row-major order:
    (K, 2) indices, (K, 4) boxes clipped to ``image_size``, (K,) scores.

    ``boxes``: (R, 4) shared by all classes or (R, 4 K) one per class; ``scores``: (R, K + 1)
    softmax with background last. Rows with a non-finite box or score are dropped first, so
    row indices refer to the finite rows.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    per_class = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).view(-1, per_class, 4)
    mask = scores > score_thresh
    inds = mask.nonzero()
    cand_boxes = boxes[inds[:, 0], 0] if per_class == 1 else boxes[mask]
    return inds, cand_boxes, scores[mask]


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> RawDetections:
    """The `candidates`, NMS per class, the best ``topk`` by score
    (detectron2 ``fast_rcnn_inference_single_image``)."""
    inds, cand_boxes, cand_scores = candidates(boxes, scores, image_size, score_thresh)
    keep = batched_nms(cand_boxes, cand_scores, inds[:, 1], nms_thresh)[:topk]
    return RawDetections(boxes=cand_boxes[keep], scores=cand_scores[keep], classes=inds[keep, 1])


class MaskRCNNHeads(nn.Module):
    """What every Mask R-CNN head set does after scoring its boxes: detectron2's test-time
    selection and the class-specific masks. Subclasses hold ``cfg`` (``test_nms_thresh``,
    ``test_detections_per_image``, ``mask_pool_size``) and ``mask_head``."""

    cfg: Any
    mask_head: MaskHead

    def select(self, boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int], score_thresh: float) -> RawDetections:
        """Threshold every (box, class) pair, NMS per class, keep the best ``test_detections_per_image``."""
        return select_detections(
            boxes,
            scores,
            image_size,
            score_thresh=score_thresh,
            nms_thresh=self.cfg.test_nms_thresh,
            topk=self.cfg.test_detections_per_image,
        )

    def masks(self, features: list[torch.Tensor], boxes: list[torch.Tensor], classes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image (Ni, 28, 28) foreground probabilities of each box's own class."""
        return self.mask_head.class_probs(features, boxes, classes, self.cfg.mask_pool_size)
