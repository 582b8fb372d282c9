"""The whole detector (detectron2 ``GeneralizedRCNN`` as configured by
``cascade_mask_rcnn_vitdet_h_75ep``): module names follow the checkpoint so it loads 1:1."""

from __future__ import annotations

import torch
from torch import nn

from ..detection.roi_heads import RawDetections
from ..detection.rpn import RPN
from .backbone import VitDetFeaturePyramid
from .config import VitDetConfig
from .roi_heads import VitDetCascadeHeads


class VitDetModel(nn.Module):
    """Backbone + RPN + cascade heads; input is the normalised, padded (B, 3, S, S) batch.

    Resizing, normalisation, padding and mapping back to the original image belong to
    `VitDetPredictor`; this module sees only the square network input.
    """

    def __init__(self, cfg: VitDetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = VitDetFeaturePyramid(cfg)
        self.proposal_generator = RPN(cfg)
        self.roi_heads = VitDetCascadeHeads(cfg)

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        *,
        score_thresh: float | None = None,
        masks: bool = True,
    ) -> list[RawDetections]:
        """``image_sizes``: (h, w) of each resized image before padding; boxes come back in that
        frame, with 28x28 mask probabilities when ``masks``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"expected {images.shape[0]} image sizes, got {len(image_sizes)}")
        features = self.backbone(images)
        proposals = self.proposal_generator(features, image_sizes)
        return self.roi_heads(
            features, [p for p, _ in proposals], image_sizes, score_thresh=score_thresh, masks=masks
        )
