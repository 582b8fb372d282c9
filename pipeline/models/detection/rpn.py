"""Region proposal network (detectron2 ``RPN`` with ``StandardRPNHead``, ``DefaultAnchorGenerator``
and ``find_top_rpn_proposals``), test-time path only."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn
from torchvision.ops import batched_nms

from .boxes import apply_deltas, clip_boxes, nonempty


class ProposalConfig(Protocol):
    """The sizes and test-time constants the RPN reads from a detector's config."""

    @property
    def fpn_channels(self) -> int: ...
    @property
    def anchor_sizes(self) -> tuple[float, ...]: ...
    @property
    def anchor_ratios(self) -> tuple[float, ...]: ...
    @property
    def rpn_pre_nms_topk(self) -> int: ...
    @property
    def rpn_post_nms_topk(self) -> int: ...
    @property
    def rpn_nms_thresh(self) -> float: ...
    @property
    def bbox_scale_clamp(self) -> float: ...


LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)


def cell_anchors(size: float, ratios: tuple[float, ...]) -> torch.Tensor:
    """(A, 4) anchors of one level centred on the origin; ratio = height / width."""
    rows = []
    for ratio in ratios:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """(H*W*A, 4) anchors in (y, x, a) order, a fastest, centred on cell corners (offset 0)."""
    device = cell.device
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack((sx, sy, sx, sy), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    """Two 3x3 conv + ReLU, then objectness and anchor deltas, shared by all levels
    (detectron2 ``StandardRPNHead`` with ``conv_dims=[-1, -1]``)."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv0", nn.Conv2d(channels, channels, 3, padding=1))
        self.conv.add_module("relu0", nn.ReLU())
        self.conv.add_module("conv1", nn.Conv2d(channels, channels, 3, padding=1))
        self.conv.add_module("relu1", nn.ReLU())
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness (B, A, H, W) and deltas (B, 4A, H, W), channel = 4a + coord."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """Anchors, decoding and per-level NMS to ``post_nms_topk`` (1000) proposals per image
    (detectron2 ``RPN``)."""

    def __init__(self, cfg: ProposalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rpn_head = RPNHead(cfg.fpn_channels, len(cfg.anchor_ratios))
        # Proposals kept per image after NMS (detectron2's POST_NMS_TOPK_TEST): a test-time knob
        # outside the frozen config so a predictor can lower it for speed without a new model.
        self.post_nms_topk = cfg.rpn_post_nms_topk

    def anchors(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors of each level for the given feature maps; built from the config, not stored."""
        out = []
        for size, stride, x in zip(self.cfg.anchor_sizes, STRIDES, features):
            cell = cell_anchors(size, self.cfg.anchor_ratios).to(x.device)
            out.append(grid_anchors(cell, stride, x.shape[-2], x.shape[-1]))
        return out

    def proposals(
        self,
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: (R, 4) proposals in the resized frame and their (R,) raw logits, sorted
        descending. Top-k per level, clip to the unpadded image, drop empty, NMS per level,
        top-k overall (detectron2 ``find_top_rpn_proposals``, test mode)."""
        cfg = self.cfg
        b = logits[0].shape[0]
        level_boxes, level_scores, level_ids = [], [], []
        for level, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
            h, w = lg.shape[-2:]
            lg = lg.float().permute(0, 2, 3, 1).reshape(b, -1)  # (B, H*W*A)
            dl = dl.float().view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
            k = min(lg.shape[1], cfg.rpn_pre_nms_topk)
            top, idx = lg.topk(k, dim=1)
            picked = torch.gather(dl, 1, idx[..., None].expand(b, k, 4))
            boxes = apply_deltas(picked.reshape(-1, 4), anc[idx.reshape(-1)], (1.0, 1.0, 1.0, 1.0), cfg.bbox_scale_clamp)
            level_boxes.append(boxes.view(b, k, 4))
            level_scores.append(top)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=lg.device))
        all_boxes = torch.cat(level_boxes, dim=1)
        all_scores = torch.cat(level_scores, dim=1)
        all_ids = torch.cat(level_ids)
        results = []
        for n, (height, width) in enumerate(image_sizes):
            boxes, scores, ids = all_boxes[n], all_scores[n], all_ids
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(finite.all()):
                boxes, scores, ids = boxes[finite], scores[finite], ids[finite]
            boxes = clip_boxes(boxes, height, width)
            keep = nonempty(boxes)
            if not bool(keep.all()):
                boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
            keep = batched_nms(boxes, scores, ids, cfg.rpn_nms_thresh)[: self.post_nms_topk]
            results.append((boxes[keep], scores[keep]))
        return results

    def forward(
        self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        maps = [features[name] for name in LEVELS]
        logits, deltas = self.rpn_head(maps)
        return self.proposals(logits, deltas, self.anchors(maps), image_sizes)

