"""Person detection on numpy images with ViTDet-H, as 4D-Humans runs detectron2's
``DefaultPredictor`` on it: BGR ``uint8`` in, detections in original image pixels out.

Pre-processing (colour flip, PIL bilinear resize, normalisation, square padding) and
post-processing (rescaling, clipping, mask pasting, the person filter) live here; the network
(`VitDetModel`) sees only the padded square batch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError
from ...imageio import as_bgr_image
from ...runtime import autocast, resolve_device, resolve_dtype
from ...weights import CacheRoots, ensure
from ..checkpoint import load_strict
from .boxes import clip_boxes, nonempty
from .config import VitDetConfig
from .convert import read_model_zoo, to_state_dict
from .files import FILES
from .model import VitDetModel
from .roi_heads import RawDetections

logger = logging.getLogger(__name__)

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


def resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """Output size of detectron2's ``ResizeShortestEdge(size, max_size=size)``: short side to
    ``size``, long side capped at ``size``, each rounded with ``int(x + 0.5)``."""
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = float(size), scale * width
    else:
        new_h, new_w = scale * height, float(size)
    if max(new_h, new_w) > size:
        shrink = size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_rgb(bgr: np.ndarray, size: int, index: int = 0) -> np.ndarray:
    """BGR -> RGB, then PIL bilinear (antialiased when shrinking) to the ResizeShortestEdge size,
    exactly the pixels detectron2's ``ResizeTransform`` produces."""
    h, w = bgr.shape[:2]
    nh, nw = resized_hw(h, w, size)
    if nh < 1 or nw < 1:
        raise InputError(
            "image_too_elongated",
            f"image {index}: a {w}x{h} image would be resized to {nw}x{nh} pixels; expected an aspect "
            f"ratio below {size}:1",
        )
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))


def to_network_input(resized: Sequence[np.ndarray], cfg: VitDetConfig, device: torch.device) -> torch.Tensor:
    """Normalise each (h, w, 3) RGB uint8 image with the RGB mean/std and pad bottom/right with
    zeros (after normalisation) into one (B, 3, S, S) float32 batch."""
    size = cfg.image_size
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=device).view(3, 1, 1)
    batch = torch.zeros((len(resized), 3, size, size), dtype=torch.float32, device=device)
    for i, rgb in enumerate(resized):
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).to(device=device, dtype=torch.float32)
        batch[i, :, : rgb.shape[0], : rgb.shape[1]] = (x - mean) / std
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


class VitDetPredictor:
    """Owns the model, its device and compute dtype, and the image pre/post-processing.

    Input: BGR ``uint8`` images (H, W, 3) as ``cv2.imread`` gives them; grayscale (H, W) and
    BGRA (H, W, 4) are converted. Output per image: `Detections` with boxes ``x0, y0, x1, y1``
    in original pixels. ``float16``/``bfloat16`` run under autocast on a GPU; on CPU they fall
    back to float32 with a logged warning, so one serving config starts on any machine.

    Two test-time speed knobs, both defaulting to the model's configuration (detectron2's
    behaviour): ``input_size``, the ResizeShortestEdge target, long-edge cap and square padding
    side (1024 for ViTDet-H; a positive multiple of the patch size), and ``post_nms_topk``, the
    RPN proposals kept per image (1000). Smaller values trade recall for time; the trunk's
    position tables are resized to the new grid as detectron2 does for any input size.
    """

    def __init__(
        self,
        model: VitDetModel,
        *,
        device: str | None = None,
        dtype: str = "float32",
        score_thresh: float = 0.5,
        stage_score_thresh: float = 0.25,
        max_batch: int = 8,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        size = model.cfg.image_size if input_size is None else int(input_size)
        if size <= 0 or size % model.cfg.patch_size:
            raise ValueError(f"expected input_size a positive multiple of {model.cfg.patch_size}, got {input_size}")
        if post_nms_topk is not None:
            if int(post_nms_topk) < 1:
                raise ValueError(f"expected post_nms_topk >= 1, got {post_nms_topk}")
            self.model.proposal_generator.post_nms_topk = int(post_nms_topk)
        # the network still sees ``model.cfg``; only pre-processing uses the test-time size
        self.cfg = replace(model.cfg, image_size=size)
        self.input_size = size
        self.post_nms_topk = self.model.proposal_generator.post_nms_topk
        self.score_thresh = score_thresh
        self.stage_score_thresh = stage_score_thresh
        self.max_batch = max_batch

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> "VitDetPredictor":
        """Load a detectron2 model-zoo ``.pkl`` (sizes inferred from its shapes) strictly."""
        arrays = read_model_zoo(path)
        cfg = VitDetConfig.from_state_dict(arrays)
        with torch.device("meta"):  # no throw-away random init of 690 M parameters
            model = VitDetModel(cfg)
        state = to_state_dict(arrays)
        load_strict(model, state, source=str(path), assign=True)
        return cls(model, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots,
        *,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        score_thresh: float = 0.5,
        stage_score_thresh: float = 0.25,
        input_size: int | None = None,
        post_nms_topk: int | None = None,
    ) -> "VitDetPredictor":
        """The checkpoint from detectron2's cache (downloaded when missing and ``download``);
        ``input_size`` / ``post_nms_topk`` as in the class docstring (None: the config's)."""
        paths = ensure(list(FILES), roots, download=download)
        return cls.from_checkpoint(
            paths[FILES[0].key],
            device=device,
            dtype=dtype,
            score_thresh=score_thresh,
            stage_score_thresh=stage_score_thresh,
            input_size=input_size,
            post_nms_topk=post_nms_topk,
        )

    def _images(self, images: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(images, np.ndarray):
            if images.ndim == 4:
                return [as_bgr_image(im, i) for i, im in enumerate(images)]
            return [as_bgr_image(images)]
        if not isinstance(images, (list, tuple)):
            raise InputError("image_invalid", f"expected a numpy image or a list of them, got {type(images).__name__}")
        return [as_bgr_image(im, i) for i, im in enumerate(images)]

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """BGR uint8 images -> (B, 3, S, S) network input and the resized (h, w) of each."""
        resized = [resize_rgb(im, self.cfg.image_size, i) for i, im in enumerate(images)]
        return to_network_input(resized, self.cfg, self.device), [r.shape[:2] for r in resized]

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
                        mask_threshold=self.cfg.mask_threshold,
                        person_above=person_above,
                    )
                )
        return out

    def __call__(self, images: list[np.ndarray] | np.ndarray, *, masks: bool | Literal["probs"] = False) -> list[Detections]:
        """People only: class person with score > ``score_thresh`` (4D-Humans' filter).

        ``masks``: True for full-image masks, ``"probs"`` for the mask head's M x M
        probabilities (`Detections.full_masks` pastes them later, e.g. in another process)."""
        return self._detect(images, masks=masks, person_above=self.score_thresh)
