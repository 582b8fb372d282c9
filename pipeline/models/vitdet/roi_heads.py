"""Cascade box heads and mask head (detectron2 ``CascadeROIHeads``, ``FastRCNNConvFCHead``,
``FastRCNNOutputLayers``, ``MaskRCNNConvUpsampleHead``, ``ROIPooler``), test-time path only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .backbone import VitDetConvNorm
from .boxes import apply_deltas, clip_boxes
from .config import VitDetConfig

POOL_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5")
POOL_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


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


class VitDetBoxHead(nn.Module):
    """4 x (3x3 conv, LN, ReLU), flatten, fc + ReLU (detectron2 ``FastRCNNConvFCHead``)."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        cin = cfg.fpn_channels
        self.num_convs = len(cfg.box_conv_dims)
        for i, dim in enumerate(cfg.box_conv_dims):
            self.add_module(f"conv{i + 1}", VitDetConvNorm(cin, dim, 3, eps=cfg.norm_eps, relu=True))
            cin = dim
        self.fc1 = nn.Linear(cin * cfg.box_pool_size**2, cfg.box_fc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_convs):
            x = getattr(self, f"conv{i + 1}")(x)
        return F.relu(self.fc1(torch.flatten(x, 1)))


class VitDetBoxPredictor(nn.Module):
    """Class logits (background last) and class-agnostic deltas (detectron2 ``FastRCNNOutputLayers``)."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        self.cls_score = nn.Linear(cfg.box_fc_dim, cfg.num_classes + 1)
        self.bbox_pred = nn.Linear(cfg.box_fc_dim, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class VitDetMaskHead(nn.Module):
    """4 x (3x3 conv, LN, ReLU), 2x deconv + ReLU, 1x1 per-class logits
    (detectron2 ``MaskRCNNConvUpsampleHead``)."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        cin = cfg.fpn_channels
        self.num_convs = len(cfg.mask_conv_dims)
        for i, dim in enumerate(cfg.mask_conv_dims):
            self.add_module(f"mask_fcn{i + 1}", VitDetConvNorm(cin, dim, 3, eps=cfg.norm_eps, relu=True))
            cin = dim
        self.deconv = nn.ConvTranspose2d(cin, cin, 2, stride=2)
        self.predictor = nn.Conv2d(cin, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, 14, 14) pooled features -> (R, num_classes, 28, 28) mask logits."""
        for i in range(self.num_convs):
            x = getattr(self, f"mask_fcn{i + 1}")(x)
        return self.predictor(F.relu(self.deconv(x)))


@dataclass
class StageOutput:
    """One cascade stage for a batch; rows follow the concatenated per-image proposals."""

    proposals: list[torch.Tensor]  # per image (Ri, 4): the boxes this stage pooled
    head_out: torch.Tensor  # (R, fc_dim)
    cls_logits: torch.Tensor  # (R, num_classes + 1), float32
    deltas: torch.Tensor  # (R, 4), float32
    pred_boxes: list[torch.Tensor]  # per image (Ri, 4), decoded, not clipped


@dataclass
class RawDetections:
    """Final detections of one image in the resized frame, sorted by score (before paste)."""

    boxes: torch.Tensor  # (N, 4) float32
    scores: torch.Tensor  # (N,) float32
    classes: torch.Tensor  # (N,) int64
    mask_probs: torch.Tensor | None = None  # (N, 28, 28) float32


class VitDetCascadeHeads(nn.Module):
    """Three box stages refining the same boxes, then masks on the final boxes."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.box_head = nn.ModuleList(VitDetBoxHead(cfg) for _ in range(cfg.num_stages))
        self.box_predictor = nn.ModuleList(VitDetBoxPredictor(cfg) for _ in range(cfg.num_stages))
        self.mask_head = VitDetMaskHead(cfg)

    def run_stage(self, features: list[torch.Tensor], proposals: list[torch.Tensor], k: int) -> StageOutput:
        """Pool, box head, predictor and decoding of stage ``k`` on the given proposals."""
        pooled = pool_boxes(features, proposals, self.cfg.box_pool_size)
        head_out = self.box_head[k](pooled)
        logits, deltas = self.box_predictor[k](head_out)
        logits, deltas = logits.float(), deltas.float()
        flat = torch.cat(proposals, dim=0)
        decoded = apply_deltas(deltas, flat, self.cfg.cascade_bbox_weights[k], self.cfg.bbox_scale_clamp)
        return StageOutput(
            proposals=proposals,
            head_out=head_out,
            cls_logits=logits,
            deltas=deltas,
            pred_boxes=list(decoded.split([len(p) for p in proposals])),
        )

    def cascade(
        self, features: list[torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[StageOutput]:
        """All stages; stage k+1 pools stage k's clipped boxes, row for row (no filtering at test)."""
        stages: list[StageOutput] = []
        for k in range(self.cfg.num_stages):
            if k > 0:
                proposals = [clip_boxes(b, h, w) for b, (h, w) in zip(stages[-1].pred_boxes, image_sizes)]
            stages.append(self.run_stage(features, proposals, k))
        return stages

    def mean_scores(self, stages: list[StageOutput]) -> torch.Tensor:
        """(R, num_classes + 1) average of the stages' softmax, as detectron2's cascade sums then
        multiplies by the reciprocal of the stage count."""
        total = stages[0].cls_logits.softmax(dim=-1)
        for stage in stages[1:]:
            total = total + stage.cls_logits.softmax(dim=-1)
        return total * (1.0 / len(stages))

    def select(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        image_size: tuple[int, int],
        score_thresh: float,
    ) -> RawDetections:
        """Threshold every (box, class) pair, NMS per class, keep the best ``test_detections_per_image``
        (detectron2 ``fast_rcnn_inference_single_image`` with class-agnostic boxes)."""
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        if not bool(finite.all()):
            boxes, scores = boxes[finite], scores[finite]
        scores = scores[:, :-1]
        boxes = clip_boxes(boxes, *image_size)
        mask = scores > score_thresh
        inds = mask.nonzero()
        cand_boxes = boxes[inds[:, 0]]
        cand_scores = scores[mask]
        keep = batched_nms(cand_boxes, cand_scores, inds[:, 1], self.cfg.test_nms_thresh)
        keep = keep[: self.cfg.test_detections_per_image]
        return RawDetections(boxes=cand_boxes[keep], scores=cand_scores[keep], classes=inds[keep, 1])

    def masks(self, features: list[torch.Tensor], boxes: list[torch.Tensor], classes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per image (Ni, 28, 28) foreground probabilities of each box's own class."""
        pooled = pool_boxes(features, boxes, self.cfg.mask_pool_size)
        logits = self.mask_head(pooled).float()
        cls = torch.cat(classes)
        probs = logits[torch.arange(len(cls), device=logits.device), cls].sigmoid()
        return list(probs.split([len(b) for b in boxes]))

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        score_thresh: float | None = None,
        masks: bool = True,
    ) -> list[RawDetections]:
        maps = [features[name] for name in POOL_LEVELS]
        stages = self.cascade(maps, proposals, image_sizes)
        scores = self.mean_scores(stages)
        last = stages[-1]
        thresh = self.cfg.test_score_thresh if score_thresh is None else score_thresh
        sizes = [len(p) for p in proposals]
        results = [
            self.select(b, s, size, thresh)
            for b, s, size in zip(last.pred_boxes, scores.split(sizes), image_sizes)
        ]
        if masks:
            probs = self.masks(maps, [r.boxes for r in results], [r.classes for r in results])
            for r, p in zip(results, probs):
                r.mask_probs = p
        return results
