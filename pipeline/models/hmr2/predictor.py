"""HMR2.0 predictor: image + person boxes -> SMPL, cameras and keypoints per person.

Three steps, exposed separately so a server can batch the middle one across requests:
`prepare` (CPU: crops of one image), `forward_crops` (the network on crops from any number of
images), `finish` (full-image cameras and pixel keypoints). `predict` chains them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...errors import InputError, WeightsError
from ...imageio import as_bgr_image
from ...runtime import autocast, resolve_device, resolve_dtype
from ...weights import CacheRoots, ensure
from ..checkpoint import load_strict
from ..smpl import read_joint_regressor, read_smpl_pickle
from . import files as hmr2_files
from .config import HMR2Config
from .convert import convert_state_dict, read_checkpoint_state_dict
from .model import HMR2
from .preprocess import CropBatch, cam_crop_to_full, full_image_focal, make_crops

logger = logging.getLogger(__name__)


@dataclass
class HMR2Output:
    """Per-person results, one row per box, float32 numpy arrays.

    Rotations are matrices (SMPL convention, camera-aligned body frame). ``cam_t`` is the
    translation for the 256-px crop camera (focal ``focal_length``), ``cam_t_full`` for the full
    image with focal ``focal_length_full`` and principal point at the image centre (OpenCV axes:
    x right, y down, z forward). ``keypoints_2d`` are the 44 joints in image pixels,
    ``keypoints_2d_crop`` the model's crop-normalised projection (crop pixel = S * v + S / 2).
    """

    boxes: np.ndarray  # (N, 4) xyxy pixels, as given
    box_center: np.ndarray  # (N, 2)
    box_size: np.ndarray  # (N,) side of the square crop, pixels
    global_orient: np.ndarray  # (N, 1, 3, 3)
    body_pose: np.ndarray  # (N, 23, 3, 3)
    betas: np.ndarray  # (N, 10)
    pred_cam: np.ndarray  # (N, 3) weak-perspective (s, tx, ty) of the crop
    cam_t: np.ndarray  # (N, 3) metres
    cam_t_full: np.ndarray  # (N, 3) metres
    focal_length: np.ndarray  # (N,) pixels of the crop
    focal_length_full: np.ndarray  # (N,) pixels of the full image
    keypoints_2d: np.ndarray  # (N, 44, 2) image pixels
    keypoints_2d_crop: np.ndarray  # (N, 44, 2)
    keypoints_3d: np.ndarray  # (N, 44, 3) metres, not translated
    vertices: np.ndarray | None = None  # (N, 6890, 3) metres, not translated; on request

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: slice | np.ndarray | Sequence[int]) -> "HMR2Output":
        values: dict[str, Any] = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index] for f in fields(self)}
        return HMR2Output(**values)


class HMR2Predictor:
    """Owns the model, its device and dtype, and the pre/post-processing around it."""

    def __init__(
        self,
        model: HMR2,
        *,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        max_batch: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        self.max_batch = max_batch

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        checkpoint: str | Path,
        *,
        model_config: str | Path | None = None,
        smpl: str | Path,
        joint_regressor: str | Path,
        **kwargs: object,
    ) -> "HMR2Predictor":
        """Build from the released files; ``model_config`` defaults to ``../model_config.yaml``."""
        checkpoint = Path(checkpoint)
        model_config = Path(model_config) if model_config else checkpoint.parent.parent / "model_config.yaml"
        if not model_config.is_file():
            raise WeightsError("weights_missing", f"model config not found at {model_config} (expected beside the checkpoint folder)")
        model = build_hmr2(checkpoint, model_config, smpl, joint_regressor)
        return cls(model, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots | None = None,
        *,
        download: bool = True,
        **kwargs: object,
    ) -> "HMR2Predictor":
        """Find (or download) the files in 4D-Humans' cache and build the predictor."""
        roots = roots or CacheRoots.from_env()
        paths = ensure(hmr2_files.FILES, roots, download=download)
        return cls.from_files(
            paths["hmr2.checkpoint"],
            model_config=paths["hmr2.model_config"],
            smpl=paths["smpl.neutral"],
            joint_regressor=paths["hmr2.joint_regressor_extra"],
            **kwargs,
        )

    # -- the three steps ---------------------------------------------------------------
    def prepare(self, image_bgr: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]]) -> CropBatch:
        """Crops of one image (BGR uint8, (H, W, 3); gray and BGRA accepted) for xyxy boxes."""
        image = as_bgr_image(image_bgr)
        checked = validate_boxes(boxes, image.shape[:2])
        return make_crops(image, checked, self.cfg)

    @torch.inference_mode()
    def forward_crops(self, crops: np.ndarray, *, vertices: bool = True) -> dict[str, np.ndarray]:
        """The network on (B, 3, S, S) normalised crops, which may come from many images.

        Runs in chunks of ``max_batch``; returns float32 arrays keyed like `HMR2.forward`.
        """
        if len(crops) == 0:
            return _empty_raw(vertices)
        chunks = []
        for start in range(0, len(crops), self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(crops[start : start + self.max_batch])).to(self.device)
            with autocast(self.device, self.dtype):
                out = self.model(x)
            if not vertices:
                out.pop("pred_vertices")
            chunks.append({k: v.float().cpu().numpy() for k, v in out.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def finish(self, batch: CropBatch, raw: dict[str, np.ndarray], boxes: np.ndarray) -> HMR2Output:
        """Full-image cameras (4D-Humans' ``cam_crop_to_full``) and keypoints in image pixels."""
        n = len(batch)
        pred_cam = torch.from_numpy(raw["pred_cam"])
        img_size = torch.from_numpy(batch.img_size)
        focal_full = full_image_focal(img_size, self.cfg)
        cam_t_full = cam_crop_to_full(
            pred_cam, torch.from_numpy(batch.box_center), torch.from_numpy(batch.box_size), img_size, focal_full
        )
        kp_crop = raw["pred_keypoints_2d"]
        # Crop-normalised v maps to crop pixel S*v + S/2, i.e. to image pixel centre + v * box_size.
        kp_img = batch.box_center[:, None, :] + kp_crop * batch.box_size[:, None, None]
        return HMR2Output(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
            box_center=batch.box_center,
            box_size=batch.box_size,
            global_orient=raw["global_orient"],
            body_pose=raw["body_pose"],
            betas=raw["betas"],
            pred_cam=raw["pred_cam"],
            cam_t=raw["pred_cam_t"],
            cam_t_full=cam_t_full.numpy(),
            focal_length=raw["focal_length"][:, 0],
            focal_length_full=focal_full.numpy().astype(np.float32),
            keypoints_2d=kp_img.astype(np.float32),
            keypoints_2d_crop=kp_crop,
            keypoints_3d=raw["pred_keypoints_3d"],
            vertices=raw.get("pred_vertices"),
        )

    def predict(
        self, image_bgr: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]], *, vertices: bool = False
    ) -> HMR2Output:
        """One image, its person boxes (N, 4) xyxy pixels -> `HMR2Output` with N rows."""
        return self.predict_many([(image_bgr, boxes)], vertices=vertices)[0]

    def predict_many(
        self, items: Sequence[tuple[np.ndarray, np.ndarray | Sequence[Sequence[float]]]], *, vertices: bool = False
    ) -> list[HMR2Output]:
        """Several images at once: their crops share the network batches."""
        batches = [self.prepare(img, boxes) for img, boxes in items]
        crops = np.concatenate([b.img for b in batches]) if batches else np.zeros((0, 3, 1, 1), np.float32)
        raw = self.forward_crops(crops, vertices=vertices)
        outputs, start = [], 0
        for (img, boxes), batch in zip(items, batches):
            part = {k: v[start : start + len(batch)] for k, v in raw.items()}
            start += len(batch)
            outputs.append(self.finish(batch, part, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
        return outputs

    @property
    def faces(self) -> np.ndarray:
        """SMPL triangles (13776, 3) int64, for rendering and texture sampling."""
        return self.model.smpl.faces


def build_hmr2(checkpoint: str | Path, model_config: str | Path, smpl: str | Path, joint_regressor: str | Path) -> HMR2:
    """The model from its config, then every tensor of the checkpoint adopted as it is read.

    The modules are built on the meta device: a random init of 630 M parameters that the
    checkpoint overwrites would cost seconds and gigabytes at every cold start. As in 4D-Humans,
    the SMPL files must exist and be readable even though the checkpoint carries the same
    buffers; the checkpoint's copies are the ones used.
    """
    cfg = HMR2Config.from_yaml(model_config)
    with torch.device("meta"):
        model = HMR2(cfg)
    extra = read_joint_regressor(joint_regressor)
    if extra.shape[0] != model.smpl.joint_regressor_extra.shape[0]:
        raise WeightsError("smpl_unreadable", f"{joint_regressor}: expected {model.smpl.joint_regressor_extra.shape[0]} joints, got {extra.shape[0]}")
    read_smpl_pickle(smpl)  # checked, not used: the checkpoint holds the buffers
    state = convert_state_dict(read_checkpoint_state_dict(checkpoint))
    load_strict(model, state, source=str(checkpoint), assign=True)
    logger.info("HMR2 loaded from %s (ViT %d x %d)", checkpoint, cfg.backbone.depth, cfg.backbone.embed_dim)
    return model


def validate_boxes(boxes: np.ndarray | Sequence[Sequence[float]], image_hw: tuple[int, int], *, allow_empty: bool = True) -> np.ndarray:
    """(N, 4) finite xyxy boxes of positive size that overlap the image; `InputError` otherwise.

    Boxes partly outside the image are valid (the crop is padded with black, as the original),
    as long as they stay within one image size of it: a crop costs time and memory in proportion
    to its box, so a box of 1e30 pixels is refused rather than attempted.
    """
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError("boxes_invalid", f"expected boxes as an (N, 4) array of numbers, got {type(boxes).__name__}") from exc
    if arr.size == 0:
        if not allow_empty:
            raise InputError("boxes_empty", "expected at least one box, got an empty list")
        return np.zeros((0, 4), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError("boxes_invalid", f"expected boxes of shape (N, 4) as x1, y1, x2, y2, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("boxes_invalid", "boxes contain NaN or infinite values")
    h, w = image_hw
    for i, (x1, y1, x2, y2) in enumerate(arr):
        if x2 <= x1 or y2 <= y1:
            raise InputError("box_empty", f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has zero or negative size (expected x2 > x1 and y2 > y1)")
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            raise InputError("box_outside_image", f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} image")
        if x1 < -w or y1 < -h or x2 > 2 * w or y2 > 2 * h:
            raise InputError(
                "box_too_large",
                f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] reaches more than one image size beyond the {w}x{h} image "
                f"(expected {-w} <= x1, x2 <= {2 * w}, {-h} <= y1, y2 <= {2 * h})",
            )
    return arr.astype(np.float32)


def _empty_raw(vertices: bool) -> dict[str, np.ndarray]:
    z = np.zeros
    raw = {
        "pred_cam": z((0, 3), np.float32),
        "global_orient": z((0, 1, 3, 3), np.float32),
        "body_pose": z((0, 23, 3, 3), np.float32),
        "betas": z((0, 10), np.float32),
        "pred_cam_t": z((0, 3), np.float32),
        "focal_length": z((0, 2), np.float32),
        "pred_keypoints_3d": z((0, 44, 3), np.float32),
        "pred_keypoints_2d": z((0, 44, 2), np.float32),
    }
    if vertices:
        raw["pred_vertices"] = z((0, 6890, 3), np.float32)
    return raw
