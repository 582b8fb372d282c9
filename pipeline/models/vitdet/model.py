"""The whole detector (detectron2 ``GeneralizedRCNN`` as configured by
``cascade_mask_rcnn_vitdet_h_75ep``): module names follow the checkpoint so it loads 1:1."""

from __future__ import annotations

from ..detection.model import GeneralizedRCNN
from ..detection.rpn import RPN
from .backbone import VitDetFeaturePyramid
from .config import VitDetConfig
from .roi_heads import VitDetCascadeHeads


class VitDetModel(GeneralizedRCNN):
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
