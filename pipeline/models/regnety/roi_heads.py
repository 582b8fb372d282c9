"""Standard (single-stage) Mask R-CNN ROI heads of the RegNetY detector (detectron2
``StandardROIHeads``), test-time path only: a 4-conv + 1-fc box head with BatchNorm,
class-specific box regression, softmax scores, and the mask head on the final boxes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..detection.boxes import apply_deltas
from ..detection.roi_heads import (
    POOL_LEVELS,
    BoxHead,
    BoxPredictor,
    MaskHead,
    MaskRCNNHeads,
    RawDetections,
    pool_boxes,
)
from .backbone import ConvBN
from .config import RegNetYConfig


@dataclass
class BoxOutput:
    """The box head on a batch of proposals; rows follow the concatenated per-image proposals."""

    head_out: torch.Tensor  # (R, fc_dim)
    cls_logits: torch.Tensor  # (R, num_classes + 1), float32
    deltas: torch.Tensor  # (R, 4 num_classes), float32
    pred_boxes: list[torch.Tensor]  # per image (Ri, 4 num_classes), decoded per class, not clipped


class RegNetYROIHeads(MaskRCNNHeads):
    """Box head, box predictor and mask head; module names as in the checkpoint."""

    def __init__(self, cfg: RegNetYConfig) -> None:
        super().__init__()
        self.cfg = cfg

        def conv(cin: int, cout: int) -> nn.Module:
            return ConvBN(cin, cout, 3, eps=cfg.bn_eps, relu=True)

        self.box_head = BoxHead(cfg.fpn_channels, cfg.box_conv_dims, cfg.box_fc_dim, cfg.box_pool_size, conv)
        self.box_predictor = BoxPredictor(cfg.box_fc_dim, cfg.num_classes, class_specific=True)
        self.mask_head = MaskHead(cfg.fpn_channels, cfg.mask_conv_dims, cfg.num_classes, conv)

    def boxes(self, features: list[torch.Tensor], proposals: list[torch.Tensor]) -> BoxOutput:
        """Pool the p2..p5 ``features`` on the proposals, run the box head and predictor, and
        decode each class's deltas on its proposal."""
        pooled = pool_boxes(features, proposals, self.cfg.box_pool_size)
        head_out = self.box_head(pooled)
        logits, deltas = self.box_predictor(head_out)
        logits, deltas = logits.float(), deltas.float()
        flat = torch.cat(proposals, dim=0)
        per_class = deltas.shape[1] // 4
        decoded = apply_deltas(
            deltas.reshape(-1, 4), flat.repeat_interleave(per_class, dim=0), self.cfg.bbox_weights, self.cfg.bbox_scale_clamp
        ).reshape(deltas.shape)
        return BoxOutput(
            head_out=head_out, cls_logits=logits, deltas=deltas, pred_boxes=list(decoded.split([len(p) for p in proposals]))
        )

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
        out = self.boxes(maps, proposals)
        scores = out.cls_logits.softmax(dim=-1)
        thresh = self.cfg.test_score_thresh if score_thresh is None else score_thresh
        results = [
            self.select(b, s, size, thresh)
            for b, s, size in zip(out.pred_boxes, scores.split([len(p) for p in proposals]), image_sizes)
        ]
        if masks:
            for r, p in zip(results, self.masks(maps, [r.boxes for r in results], [r.classes for r in results])):
                r.mask_probs = p
        return results
