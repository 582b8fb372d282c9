"""detectron2's ``GeneralizedRCNN`` at inference: backbone -> proposals -> ROI heads. Each
detector's model (`VitDetModel`, `RegNetYModel`) builds the three modules under the checkpoint's
names; the pass through them is this one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .roi_heads import RawDetections


class GeneralizedRCNN(nn.Module):
    """Input: the normalised, padded (B, 3, H, W) batch. Resizing, normalisation, padding and
    mapping back to the original image belong to the predictor."""

    # set by each detector under the checkpoint's module names
    cfg: Any
    backbone: Any
    proposal_generator: Any
    roi_heads: Any
    size_divisibility: int = 1  # padded sides must be multiples of this (the backbone's stride)

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
        div = self.size_divisibility
        if images.shape[2] % div or images.shape[3] % div:
            raise ValueError(f"expected images padded to multiples of {div}, got {tuple(images.shape)}")
        features = self.backbone(images)
        proposals = self.proposal_generator(features, image_sizes)
        return self.roi_heads(
            features, [p for p, _ in proposals], image_sizes, score_thresh=score_thresh, masks=masks
        )
