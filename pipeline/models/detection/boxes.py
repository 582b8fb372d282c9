"""Box arithmetic shared by the RPNs and box heads of the detectors (detectron2 ``Box2BoxTransform``, ``Boxes``).

Boxes are (N, 4) float32 ``x0, y0, x1, y1`` in continuous pixel coordinates; width is
``x1 - x0`` with no +1.
"""

from __future__ import annotations

import torch


def apply_deltas(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: tuple[float, float, float, float], scale_clamp: float
) -> torch.Tensor:
    """Decode (N, 4) ``dx, dy, dw, dh`` against (N, 4) boxes (detectron2 ``apply_deltas``).

    Always float32, whatever the autocast dtype of the head that produced ``deltas``.
    """
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h, pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h),
        dim=-1,
    )


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp x to [0, width] and y to [0, height] (detectron2 ``Boxes.clip``)."""
    x0 = boxes[:, 0].clamp(min=0, max=width)
    y0 = boxes[:, 1].clamp(min=0, max=height)
    x1 = boxes[:, 2].clamp(min=0, max=width)
    y1 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Mask of boxes wider and taller than ``threshold`` (detectron2 ``Boxes.nonempty``)."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
