"""The whole detector (detectron2 ``GeneralizedRCNN`` as configured by
``mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ``): module names follow the checkpoint so it loads 1:1."""

from __future__ import annotations

from ..detection.model import GeneralizedRCNN
from ..detection.rpn import RPN
from .backbone import RegNetFPN
from .config import RegNetYConfig
from .roi_heads import RegNetYROIHeads


class RegNetYModel(GeneralizedRCNN):
    """RegNetY + FPN, RPN and standard Mask R-CNN heads; input is the normalised, padded
    (B, 3, H, W) BGR batch, H and W multiples of ``size_divisibility``.

    Resizing, normalisation, padding and mapping back to the original image belong to
    `RegNetYPredictor`.
    """

    def __init__(self, cfg: RegNetYConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.size_divisibility = cfg.size_divisibility
        self.backbone = RegNetFPN(cfg)
        self.proposal_generator = RPN(cfg)
        self.roi_heads = RegNetYROIHeads(cfg)
