"""Cascade box heads and mask head (detectron2 ``CascadeROIHeads``) from the shared head parts,
test-time path only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..detection.boxes import apply_deltas, clip_boxes
from ..detection.roi_heads import (
    POOL_LEVELS,
    BoxHead,
    BoxPredictor,
    ConvNormReLU,
    MaskHead,
    MaskRCNNHeads,
    RawDetections,
    pool_boxes,
)
from .backbone import VitDetConvNorm
from .config import VitDetConfig


def _conv_norm(cfg: VitDetConfig) -> ConvNormReLU:
    """3x3 conv, channel LayerNorm, ReLU: the layer of ViTDet's box and mask heads."""
    return lambda cin, cout: VitDetConvNorm(cin, cout, 3, eps=cfg.norm_eps, relu=True)


@dataclass
class StageOutput:
    """One cascade stage for a batch; rows follow the concatenated per-image proposals."""

    proposals: list[torch.Tensor]  # per image (Ri, 4): the boxes this stage pooled
    head_out: torch.Tensor  # (R, fc_dim)
    cls_logits: torch.Tensor  # (R, num_classes + 1), float32
    deltas: torch.Tensor  # (R, 4), float32
    pred_boxes: list[torch.Tensor]  # per image (Ri, 4), decoded, not clipped


class VitDetCascadeHeads(MaskRCNNHeads):
    """Three box stages refining the same boxes, then masks on the final boxes."""

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        conv = _conv_norm(cfg)
        self.box_head = nn.ModuleList(
            BoxHead(cfg.fpn_channels, cfg.box_conv_dims, cfg.box_fc_dim, cfg.box_pool_size, conv)
            for _ in range(cfg.num_stages)
        )
        self.box_predictor = nn.ModuleList(
            BoxPredictor(cfg.box_fc_dim, cfg.num_classes, class_specific=False) for _ in range(cfg.num_stages)
        )
        self.mask_head = MaskHead(cfg.fpn_channels, cfg.mask_conv_dims, cfg.num_classes, conv)

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
