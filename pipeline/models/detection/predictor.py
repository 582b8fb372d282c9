"""Image-level pre- and post-processing around a detectron2-style detector, and the predictor
behaviour our detectors share: BGR ``uint8`` numpy images in, `Detections` in original image
pixels out (detectron2's ``DefaultPredictor`` plus 4D-Humans' person filter).

Resizing (``ResizeShortestEdge`` with PIL bilinear), normalisation and zero padding, mapping
boxes back to the original frame and pasting masks are the same for every detector; what
differs (colour order, padding rule, sizes) is passed in by each model's predictor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...errors import InputError
from ...imageio import as_bgr_image
from ...runtime import autocast
from .boxes import clip_boxes, nonempty
from .roi_heads import RawDetections

PERSON_CLASS = 0


@dataclass
class Detections:
    """Detections of one image, in its original pixel frame, sorted by score (descending)."""

    boxes: np.ndarray  # (N, 4) float32, x0, y0, x1, y1 in original image pixels (width = x1 - x0)
    scores: np.ndarray  # (N,) float32 in [0, 1]
    classes: np.ndarray  # (N,) int64 contiguous COCO ids, 0 = person
    masks: np.ndarray | None = None  # (N, H, W) bool full-image masks, only when requested
    # (N, M, M) float32 mask-head probabilities in box coordinates (``masks="probs"``): what
    # travels between processes; `full_masks` pastes them where the full-size masks are needed.
    mask_probs: np.ndarray | None = None
    mask_threshold: float = 0.5

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> "Detections":
        """The subset at boolean mask or indices ``keep``."""
        return Detections(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            classes=self.classes[keep],
            masks=None if self.masks is None else self.masks[keep],
            mask_probs=None if self.mask_probs is None else self.mask_probs[keep],
            mask_threshold=self.mask_threshold,
        )

    def full_masks(self, height: int, width: int) -> np.ndarray | None:
        """(N, height, width) bool masks: the pasted ones, or pasted now from ``mask_probs``
        (the same paste as ``masks=True``, so the same pixels)."""
        if self.masks is not None:
            return self.masks
        if self.mask_probs is None:
            return None
        return paste_masks(
            torch.from_numpy(np.array(self.mask_probs, dtype=np.float32)), torch.from_numpy(np.array(self.boxes, dtype=np.float32)),
            height, width, self.mask_threshold,
        ).numpy()


def resized_hw(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output size of detectron2's ``ResizeShortestEdge(size, max_size)``: short side to
    ``size``, long side capped at ``max_size`` (default ``size``), each rounded with
    ``int(x + 0.5)``."""
    cap = size if max_size is None else max_size
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = float(size), scale * width
    else:
        new_h, new_w = scale * height, float(size)
    if max(new_h, new_w) > cap:
        shrink = cap / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge(image: np.ndarray, size: int, max_size: int | None = None, index: int = 0) -> np.ndarray:
    """PIL bilinear (antialiased when shrinking) of an (h, w, 3) ``uint8`` image to the
    ResizeShortestEdge size: exactly the pixels detectron2's ``ResizeTransform`` produces. The
    filter works per channel, so the colour order is kept as given."""
    h, w = image.shape[:2]
    nh, nw = resized_hw(h, w, size, max_size)
    if nh < 1 or nw < 1:
        raise InputError(
            "image_too_elongated",
            f"image {index}: a {w}x{h} image would be resized to {nw}x{nh} pixels; expected an aspect "
            f"ratio below {size if max_size is None else max_size}:1",
        )
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.Resampling.BILINEAR))


def normalise_and_pad(
    resized: Sequence[np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    *,
    square: int | None = None,
    divisibility: int = 1,
) -> torch.Tensor:
    """Normalise each (h, w, 3) ``uint8`` image per channel (``(x - mean) / std``, in the
    channel order given) and pad bottom/right with zeros after normalisation into one float32
    batch: a ``square`` side, or the largest size rounded up to ``divisibility``."""
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=device).view(3, 1, 1)
    if square is not None:
        height = width = square
    else:
        height = -(-max(im.shape[0] for im in resized) // divisibility) * divisibility
        width = -(-max(im.shape[1] for im in resized) // divisibility) * divisibility
    batch = torch.zeros((len(resized), 3, height, width), dtype=torch.float32, device=device)
    for i, im in enumerate(resized):
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(device=device, dtype=torch.float32)
        batch[i, :, : im.shape[0], : im.shape[1]] = (x - mean_t) / std_t
    return batch


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float = 0.5) -> torch.Tensor:
    """(N, M, M) probabilities pasted into (N, height, width) bool masks along their boxes
    (detectron2 ``paste_masks_in_image``): bilinear ``grid_sample`` at pixel centres, zero
    outside the mask, ``>= threshold``. Only each box's region (plus one pixel) is sampled;
    beyond it the interpolated value is below the threshold anyway."""
    n = probs.shape[0]
    out = torch.zeros((n, height, width), dtype=torch.bool, device=probs.device)
    for i in range(n):
        x0, y0, x1, y1 = boxes[i]
        ix0 = int(max(math.floor(float(x0)) - 1, 0))
        iy0 = int(max(math.floor(float(y0)) - 1, 0))
        ix1 = int(min(math.ceil(float(x1)) + 1, width))
        iy1 = int(min(math.ceil(float(y1)) + 1, height))
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        ys = torch.arange(iy0, iy1, device=probs.device, dtype=torch.float32) + 0.5
        xs = torch.arange(ix0, ix1, device=probs.device, dtype=torch.float32) + 0.5
        ys = (ys - y0) / (y1 - y0) * 2 - 1
        xs = (xs - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack(
            [xs[None, :].expand(len(ys), len(xs)), ys[:, None].expand(len(ys), len(xs))], dim=2
        )[None]
        pasted = F.grid_sample(probs[i][None, None].float(), grid, align_corners=False)[0, 0]
        out[i, iy0:iy1, ix0:ix1] = pasted >= threshold
    return out


def postprocess(
    raw: RawDetections,
    original_hw: tuple[int, int],
    resized: tuple[int, int],
    *,
    masks: bool | Literal["probs"],
    mask_threshold: float = 0.5,
    person_above: float | None = None,
) -> Detections:
    """Resized frame -> original frame (detectron2 ``detector_postprocess``): scale x and y
    separately, clip, drop empty boxes, paste masks with the final boxes. With ``person_above``
    only persons scoring above it are kept, before the (costly) full-resolution paste.
    ``masks="probs"`` keeps the mask head's probabilities instead of pasting them."""
    h, w = original_hw
    boxes = raw.boxes.clone()
    boxes[:, 0::2] *= w / resized[1]
    boxes[:, 1::2] *= h / resized[0]
    boxes = clip_boxes(boxes, h, w)
    keep = nonempty(boxes)
    if person_above is not None:
        keep &= (raw.classes == PERSON_CLASS) & (raw.scores > person_above)
    boxes, scores, classes = boxes[keep], raw.scores[keep], raw.classes[keep]
    pasted = probs = None
    if masks:
        if raw.mask_probs is None:
            raise ValueError("masks requested but the model ran without the mask head")
        if masks == "probs":
            probs = raw.mask_probs[keep].float().cpu().numpy()
        else:
            pasted = paste_masks(raw.mask_probs[keep], boxes, h, w, mask_threshold).cpu().numpy()
    return Detections(
        boxes=boxes.cpu().numpy().astype(np.float32),
        scores=scores.float().cpu().numpy(),
        classes=classes.cpu().numpy().astype(np.int64),
        masks=pasted,
        mask_probs=probs,
        mask_threshold=mask_threshold,
    )


class DetectionPredictor:
    """What our detectors' predictors share: input checking, batching, running the network
    under the compute dtype, post-processing and the person filter.

    A subclass sets ``device``, ``dtype``, ``model`` (called as ``model(batch, sizes,
    score_thresh=..., masks=...)`` -> `RawDetections` per image), ``score_thresh`` (the person
    filter), ``stage_score_thresh`` (the network's own threshold on every class),
    ``mask_threshold``, ``max_batch``, and implements `preprocess`.
    """

    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    score_thresh: float
    stage_score_thresh: float
    mask_threshold: float = 0.5
    max_batch: int = 8

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """BGR uint8 images -> the padded network batch and the resized (h, w) of each."""
        raise NotImplementedError

    def _images(self, images: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return [as_bgr_image(im, i) for i, im in enumerate(images)]
            return [as_bgr_image(images)]
        if not isinstance(images, (list, tuple)):
            raise InputError("image_invalid", f"expected a numpy image or a list of them, got {type(images).__name__}")
        return [as_bgr_image(im, i) for i, im in enumerate(images)]

    @torch.inference_mode()
    def infer(self, images: list[np.ndarray], *, masks: bool) -> list[tuple[RawDetections, tuple[int, int]]]:
        """Network outputs in the resized frame (all classes above the stage threshold)."""
        batch, sizes = self.preprocess(images)
        with autocast(self.device, self.dtype):
            raws = self.model(batch, sizes, score_thresh=self.stage_score_thresh, masks=masks)
        return list(zip(raws, sizes))

    def detect_raw(self, images: list[np.ndarray] | np.ndarray, *, masks: bool | Literal["probs"] = False) -> list[Detections]:
        """All detections of every class above the stage threshold, original frame, unfiltered."""
        return self._detect(images, masks=masks, person_above=None)

    @torch.inference_mode()
    def _detect(
        self, images: list[np.ndarray] | np.ndarray, *, masks: bool | Literal["probs"], person_above: float | None
    ) -> list[Detections]:
        frames = self._images(images)
        out: list[Detections] = []
        for start in range(0, len(frames), self.max_batch):
            chunk = frames[start : start + self.max_batch]
            for frame, (raw, size) in zip(chunk, self.infer(chunk, masks=bool(masks))):
                out.append(
                    postprocess(
                        raw,
                        frame.shape[:2],
                        size,
                        masks=masks,
                        mask_threshold=self.mask_threshold,
                        person_above=person_above,
                    )
                )
        return out

    def __call__(self, images: list[np.ndarray] | np.ndarray, *, masks: bool | Literal["probs"] = False) -> list[Detections]:
        """People only: class person with score > ``score_thresh`` (4D-Humans' filter).

        ``masks``: True for full-image masks, ``"probs"`` for the mask head's M x M
        probabilities (`Detections.full_masks` pastes them later, e.g. in another process)."""
        return self._detect(images, masks=masks, person_above=self.score_thresh)
