"""Configuration of the RegNetY-4GF Mask R-CNN detector (4D-Humans' ``--detector regnety``).

One frozen dataclass holds the generator parameters of the RegNet trunk and every size and
test-time constant of detectron2's ``new_baselines/mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ`` as
4D-Humans configures it (box score threshold 0.5, NMS 0.4). Stage widths and depths are not
stored: they follow from ``w_a, w_0, w_m, depth`` and the group width by RegNet's rule
(`stage_specs`), as detectron2 derives them. Presets: `regnety_4gf` (the published checkpoint)
and `regnety_tiny` (the small model our factory writes); `RegNetYConfig.from_description`
reads a model description in the layout of the reference fixtures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class StageSpec:
    """One RegNet stage after the width adjustment: output width, block count, group count."""

    width: int
    depth: int
    groups: int  # of the 3x3 conv: bottleneck width / group width


@dataclass(frozen=True)
class RegNetYConfig:
    """Sizes and test-time constants; defaults are the full RegNetY-4GF model as 4D-Humans runs it."""

    # --- input (BGR end to end: the model-zoo config's input format) ----------------------------
    short_edge: int = 800  # ResizeShortestEdge target at test time
    max_size: int = 1333  # long-edge cap
    size_divisibility: int = 32  # pad bottom/right to multiples of this (largest trunk stride)
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)  # B, G, R on the 0..255 scale
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)  # B, G, R

    # --- RegNet trunk (detectron2 ``RegNet`` with ``SimpleStem`` and ``ResBottleneckBlock``) -----
    stem_width: int = 32
    depth: int = 22  # blocks over all stages
    w_a: float = 31.41  # width slope
    w_0: int = 96  # initial width
    w_m: float = 2.24  # width multiplier between quantised stages
    group_width: int = 64
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.25  # of the block INPUT width
    width_quantum: int = 8  # widths are rounded to multiples of this before grouping
    bn_eps: float = 1e-5  # every BatchNorm, trunk, pyramid and heads

    # --- FPN + RPN ------------------------------------------------------------------------------
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level p2..p6
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_topk: int = 1000  # per level
    rpn_post_nms_topk: int = 1000  # per image
    rpn_nms_thresh: float = 0.7
    bbox_scale_clamp: float = math.log(1000.0 / 16)

    # --- standard ROI heads -----------------------------------------------------------------------
    num_classes: int = 80  # COCO; background is the extra last logit
    box_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    box_fc_dim: int = 1024
    bbox_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_pool_size: int = 7
    test_score_thresh: float = 0.5  # 4D-Humans' override (detectron2's default is 0.05)
    test_nms_thresh: float = 0.4  # 4D-Humans' override (default 0.5)
    test_detections_per_image: int = 100
    mask_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    mask_pool_size: int = 14
    mask_threshold: float = 0.5  # pasted probability >= this is foreground

    def stage_specs(self) -> tuple[StageSpec, ...]:
        """Per stage width, depth and groups by RegNet's rule (detectron2
        ``generate_regnet_parameters`` then ``adjust_block_compatibility``).

        Block j's continuous width ``w_0 + j w_a`` is snapped to ``w_0 w_m^k`` with integer k,
        rounded to a multiple of ``width_quantum``; runs of equal widths form the stages. Each
        stage's bottleneck width is then rounded to a multiple of its group width (itself at
        most the bottleneck width), and the stage width follows from the bottleneck ratio.
        """
        if self.w_a < 0 or self.w_0 <= 0 or self.w_m <= 1 or self.w_0 % self.width_quantum:
            raise ValueError(f"invalid RegNet parameters w_a={self.w_a}, w_0={self.w_0}, w_m={self.w_m}")
        continuous = np.arange(self.depth) * self.w_a + self.w_0
        exponents = np.round(np.log(continuous / self.w_0) / np.log(self.w_m))
        widths = self.w_0 * np.power(self.w_m, exponents)
        widths = np.round(widths / self.width_quantum).astype(int) * self.width_quantum
        stage_widths, stage_depths = np.unique(widths, return_counts=True)
        specs = []
        for width, depth in zip(stage_widths.tolist(), stage_depths.tolist()):
            bottleneck = int(max(1, width * self.bottleneck_ratio))
            group = int(min(self.group_width, bottleneck))
            multiple = int(np.lcm(group, int(self.bottleneck_ratio))) if self.bottleneck_ratio > 1 else group
            bottleneck = max(multiple, int(round(bottleneck / multiple) * multiple))
            specs.append(StageSpec(width=int(bottleneck / self.bottleneck_ratio), depth=int(depth), groups=bottleneck // group))
        return tuple(specs)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stage_specs())

    def se_width(self, w_in: int) -> int:
        """Hidden width of a block's squeeze-excitation: from the block's input width."""
        return int(round(w_in * self.se_ratio))

    @classmethod
    def from_description(cls, model: Mapping[str, Any]) -> "RegNetYConfig":
        """The config a model description gives (the ``model`` section of the reference
        fixtures' ``tiny_config.json`` or of the full model's schema)."""
        inp = model["input"]
        trunk = model["backbone_regnet"]["config"]
        rpn = model["rpn"]
        roi = model["roi_heads"]
        pred = roi["box_predictor"]
        if roi["box_head"]["fc_dims"] and len(roi["box_head"]["fc_dims"]) != 1:
            raise ValueError(f"expected one fc layer in the box head, got {roi['box_head']['fc_dims']}")
        return cls(
            short_edge=int(inp["resize"]["short_edge_length"]),
            max_size=int(inp["resize"]["max_size"]),
            size_divisibility=int(inp["padding"]["size_divisibility"]),
            pixel_mean=tuple(float(v) for v in inp["pixel_mean"]),  # type: ignore[arg-type]
            pixel_std=tuple(float(v) for v in inp["pixel_std"]),  # type: ignore[arg-type]
            stem_width=int(trunk["stem_width"]),
            depth=int(trunk["depth"]),
            w_a=float(trunk["w_a"]),
            w_0=int(trunk["w_0"]),
            w_m=float(trunk["w_m"]),
            group_width=int(trunk["group_width"]),
            bottleneck_ratio=float(trunk["bottleneck_ratio"]),
            se_ratio=float(trunk["se_ratio"]),
            bn_eps=float(model["backbone_regnet"]["stem"]["bn"]["eps"]),
            fpn_channels=int(model["fpn"]["out_channels"]),
            anchor_sizes=tuple(float(s) for sizes in rpn["anchor_generator"]["sizes"] for s in sizes),
            anchor_ratios=tuple(float(r) for r in rpn["anchor_generator"]["aspect_ratios"]),
            rpn_pre_nms_topk=int(rpn["pre_nms_topk_test"]),
            rpn_post_nms_topk=int(rpn["post_nms_topk_test"]),
            rpn_nms_thresh=float(rpn["nms_thresh"]),
            bbox_scale_clamp=float(rpn["scale_clamp"]),
            num_classes=int(roi["num_classes"]),
            box_conv_dims=tuple(int(d) for d in roi["box_head"]["conv_dims"]),
            box_fc_dim=int(roi["box_head"]["fc_dims"][0]),
            bbox_weights=tuple(float(w) for w in pred["box2box_weights"]),  # type: ignore[arg-type]
            box_pool_size=int(roi["box_pooler"]["output_size"]),
            test_score_thresh=float(pred["test_score_thresh"]),
            test_nms_thresh=float(pred["test_nms_thresh"]),
            test_detections_per_image=int(pred["test_topk_per_image"]),
            mask_conv_dims=tuple(int(d) for d in roi["mask_head"]["conv_dims"]),
            mask_pool_size=int(roi["mask_pooler"]["output_size"]),
        )


def regnety_4gf() -> RegNetYConfig:
    """RegNetY-4GF Mask R-CNN (FPN, 400 epochs, LSJ): the checkpoint 4D-Humans downloads."""
    return RegNetYConfig()


def regnety_tiny() -> RegNetYConfig:
    """The tiny model our factory writes: the same code path at small widths and depth (the
    reference fixtures' tiny model: stages 12, 36, 60, 132 wide, 1, 1, 2, 2 deep)."""
    return replace(
        RegNetYConfig(),
        stem_width=16,
        depth=6,
        w_a=24.0,
        w_0=16,
        w_m=2.0,
        group_width=12,
        fpn_channels=32,
        box_conv_dims=(32, 32, 32, 32),
        box_fc_dim=64,
        mask_conv_dims=(32, 32, 32, 32),
    )


PRESETS = (regnety_4gf, regnety_tiny)
