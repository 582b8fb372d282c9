"""The whole detector (detectron2 ``GeneralizedRCNN`` as configured by
``mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ``): module names follow the checkpoint so it loads 1:1."""

from __future__ import annotations

import torch
from torch import nn

from ..detection.roi_heads import RawDetections
from ..detection.rpn import RPN
from .backbone import RegNetFPN
from .config import RegNetYConfig
from .roi_heads import RegNetYROIHeads


class RegNetYModel(nn.Module):
    """RegNetY + FPN, RPN and standard Mask R-CNN heads; input is the normalised, padded
    (B, 3, H, W) BGR batch, H and W multiples of ``size_divisibility``.

    Resizing, normalisation, padding and mapping back to the original image belong to
    `RegNetYPredictor`.
    """

    def __init__(self, cfg: RegNetYConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = RegNetFPN(cfg)
        self.proposal_generator = RPN(cfg)
        self.roi_heads = RegNetYROIHeads(cfg)

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
        div = self.cfg.size_divisibility
        if images.shape[2] % div or images.shape[3] % div:
            raise ValueError(f"expected images padded to multiples of {div}, got {tuple(images.shape)}")
        features = self.backbone(images)
        proposals = self.proposal_generator(features, image_sizes)
        return self.roi_heads(
            features, [p for p, _ in proposals], image_sizes, score_thresh=score_thresh, masks=masks
        )
