"""Configuration of the ViTDet Cascade Mask R-CNN detector (4D-Humans' person detector).

One frozen dataclass holds every size and test-time constant of
``cascade_mask_rcnn_vitdet_h_75ep`` as 4D-Humans configures it. Two presets exist:
`vitdet_h` (the published checkpoint) and `vitdet_tiny` (the tiny random-weight model our
factory writes). `VitDetConfig.from_state_dict` recovers the sizes from a model-zoo state dict
alone, since the pickle carries weights but no configuration.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from ...errors import WeightsError


@dataclass(frozen=True)
class VitDetConfig:
    """Sizes and test-time constants; defaults are the full ViTDet-H model as 4D-Humans runs it."""

    # --- input -----------------------------------------------------------------------------
    image_size: int = 1024  # shortest edge target, longest-edge cap, and square padding size
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)  # RGB, 0..255 scale

    # --- ViT trunk (detectron2 ViT) -------------------------------------------------------------
    patch_size: int = 16
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    window_size: int = 14
    window_block_indexes: tuple[int, ...] = tuple(i for i in range(32) if i % 8 != 7)
    pretrain_img_size: int = 224  # abs pos-embed grid is pretrain_img_size / patch_size, plus cls
    norm_eps: float = 1e-6  # every LayerNorm, trunk and channel-wise

    # --- simple feature pyramid + RPN ---------------------------------------------------------------
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level p2..p6
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_topk: int = 1000  # per level
    rpn_post_nms_topk: int = 1000  # per image
    rpn_nms_thresh: float = 0.7
    # dw/dh are clamped to this before exp(), as detectron2's Box2BoxTransform does
    bbox_scale_clamp: float = math.log(1000.0 / 16)

    # --- cascade box heads --------------------------------------------------------------------------
    num_classes: int = 80  # COCO; background is the extra last logit
    box_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    box_fc_dim: int = 1024
    cascade_bbox_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )
    box_pool_size: int = 7
    test_score_thresh: float = 0.25  # 4D-Humans' demo value; only the last stage's is used
    test_nms_thresh: float = 0.5
    test_detections_per_image: int = 100

    # --- mask head ----------------------------------------------------------------------------------
    mask_conv_dims: tuple[int, ...] = (256, 256, 256, 256)
    mask_pool_size: int = 14
    mask_threshold: float = 0.5  # pasted probability >= this is foreground

    @property
    def grid_size(self) -> int:
        """Token grid side of the ViT for the square padded input (64 for 1024 / 16)."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_stages(self) -> int:
        return len(self.cascade_bbox_weights)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[int] | object], base: "VitDetConfig | None" = None) -> "VitDetConfig":
        """Sizes inferred from the shapes of a model-zoo state dict; constants from ``base``.

        Everything that varies between our presets is readable from shapes: the head count
        from the relative-position tables (``rel_pos_h`` is ``(2 * S - 1, head_dim)``), and
        which blocks use windows from the first dimension of those tables (``2 * window - 1``
        for windowed blocks, ``2 * grid - 1`` for global ones). ``state`` maps names to arrays
        or to shapes. Test-time constants (thresholds, anchors, box weights) are not in the file
        and come from ``base`` (`vitdet_h` by default).
        """
        base = base or vitdet_h()

        def shape(key: str) -> tuple[int, ...]:
            if key not in state:
                raise WeightsError("weights_not_vitdet", f"expected key {key!r} in a ViTDet state dict, it is absent")
            value = state[key]
            return tuple(int(s) for s in (value.shape if hasattr(value, "shape") else value))  # type: ignore[union-attr]

        pos = shape("backbone.net.pos_embed")
        embed_dim = pos[2]
        pretrain_grid = math.isqrt(pos[1] - 1)
        block_ids = sorted(
            {int(m.group(1)) for k in state if (m := re.match(r"backbone\.net\.blocks\.(\d+)\.", k))}
        )
        depth = len(block_ids)
        head_dim = shape("backbone.net.blocks.0.attn.rel_pos_h")[1]
        windows = []
        for i in block_ids:
            span = shape(f"backbone.net.blocks.{i}.attn.rel_pos_h")[0]
            if span == 2 * base.window_size - 1:
                windows.append(i)
            elif span != 2 * base.grid_size - 1:
                raise WeightsError(
                    "weights_not_vitdet",
                    f"block {i}: rel_pos_h has {span} rows, expected {2 * base.window_size - 1} (windowed) "
                    f"or {2 * base.grid_size - 1} (global)",
                )
        box_convs = sorted(k for k in state if re.fullmatch(r"roi_heads\.box_head\.0\.conv\d+\.weight", k))
        mask_convs = sorted(k for k in state if re.fullmatch(r"roi_heads\.mask_head\.mask_fcn\d+\.weight", k))
        stages = len({k.split(".")[2] for k in state if k.startswith("roi_heads.box_predictor.")})
        if stages != base.num_stages:
            raise WeightsError(
                "weights_not_vitdet", f"expected {base.num_stages} cascade stages, the state dict has {stages}"
            )
        return replace(
            base,
            patch_size=shape("backbone.net.patch_embed.proj.weight")[2],
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dim,
            mlp_ratio=shape("backbone.net.blocks.0.mlp.fc1.weight")[0] / embed_dim,
            window_block_indexes=tuple(windows),
            pretrain_img_size=pretrain_grid * shape("backbone.net.patch_embed.proj.weight")[2],
            fpn_channels=shape("backbone.simfp_4.0.weight")[0],
            num_classes=shape("roi_heads.mask_head.predictor.weight")[0],
            box_conv_dims=tuple(shape(k)[0] for k in box_convs),
            box_fc_dim=shape("roi_heads.box_head.0.fc1.weight")[0],
            mask_conv_dims=tuple(shape(k)[0] for k in mask_convs),
        )


def vitdet_h() -> VitDetConfig:
    """ViTDet-H Cascade Mask R-CNN, 75 epochs: the checkpoint 4D-Humans downloads."""
    return VitDetConfig()


def vitdet_tiny() -> VitDetConfig:
    """The tiny model our factory writes: ViTDet-H's code path with small widths and depth."""
    return replace(
        VitDetConfig(),
        embed_dim=64,
        depth=4,
        num_heads=4,
        window_block_indexes=(0, 1, 2),
        fpn_channels=32,
        box_conv_dims=(32, 32, 32, 32),
        box_fc_dim=64,
        mask_conv_dims=(32, 32, 32, 32),
    )
