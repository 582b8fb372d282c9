"""Person crops for HMR2.0 and the camera conversion back to the full image.

Follows 4D-Humans' ``ViTDetDataset`` and ``cam_crop_to_full`` number for number: the box is
expanded to the 192:256 aspect, cropped as a square of side ``box_size`` with OpenCV's
fixed-point bilinear warp (any other bilinear changes pixels by a grey level), after an
anti-alias Gaussian blur when the crop shrinks by more than 2.2x.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .config import HMR2Config

_TRUNCATE = 4.0  # scikit-image's (and scipy's) Gaussian truncation, in sigmas


@dataclass
class CropBatch:
    """Crops of one image, ready for the network.

    img: (N, 3, S, S) float32, RGB, normalised; box_center (N, 2) and box_size (N,) float32 in
    image pixels; img_size (N, 2) float32 (W, H); blur_sigma (N,) (0 when not blurred);
    affine (N, 2, 3) image -> crop pixel map.
    """

    img: np.ndarray
    box_center: np.ndarray
    box_size: np.ndarray
    img_size: np.ndarray
    blur_sigma: np.ndarray
    affine: np.ndarray

    def __len__(self) -> int:
        return len(self.img)


def box_centers_sizes(boxes: np.ndarray, bbox_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres and square crop sides of xyxy boxes, in float32 like the original.

    The box is grown to the (w, h) aspect ``bbox_shape``; the crop side is the larger side.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    center = (boxes[:, 2:4] + boxes[:, 0:2]) / 2.0
    # The original stores the size as a "scale" (size / 200) and multiplies back by 200.
    wh = (boxes[:, 2:4] - boxes[:, 0:2]) / 200.0 * 200
    w_t, h_t = bbox_shape
    sizes = np.empty(len(boxes), dtype=np.float32)
    for i, (w, h) in enumerate(wh):
        if h / w < h_t / w_t:
            w_new, h_new = w, max(w * h_t / w_t, h)
        else:
            w_new, h_new = max(h * w_t / h_t, w), h
        sizes[i] = np.array([w_new, h_new], dtype=np.float32).max()
    return center.astype(np.float32), sizes


def blur_sigma_for(box_size: np.float32, patch_size: int) -> float:
    """Anti-alias sigma: blur when the downsampling factor / 2 exceeds 1.1 (else 0)."""
    factor = np.float32(box_size) * np.float32(1.0) / np.float32(patch_size) / np.float32(2.0)
    return float((factor - np.float32(1)) / np.float32(2)) if factor > 1.1 else 0.0


def crop_affine(cx: np.float32, cy: np.float32, size: np.float32, patch_size: int) -> np.ndarray:
    """The 2x3 image -> patch map, built from three float32 point pairs as the original does."""
    half = np.float32(size) * np.float32(0.5)
    src = np.array([[cx, cy], [cx, cy + half], [cx + half, cy]], dtype=np.float32)
    p = np.float32(patch_size) * np.float32(0.5)
    dst = np.array([[p, p], [p, 2 * p], [2 * p, p]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def _blurred_region(img: np.ndarray, affine: np.ndarray, patch_size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Blur only the part of the image the crop reads, plus the Gaussian's reach.

    Equal to blurring the whole image (the original) on every pixel the warp samples, since a
    pixel's blurred value depends only on pixels within ``truncate * sigma`` of it, and the
    image border is handled as 'nearest' exactly where the region touches it. Returns the
    region and the affine re-based to it.
    """
    h, w = img.shape[:2]
    inv = cv2.invertAffineTransform(affine)
    corners = np.array([[0, 0, 1], [patch_size, 0, 1], [0, patch_size, 1], [patch_size, patch_size, 1]], dtype=np.float64)
    pts = corners @ inv.T
    x0 = max(int(np.floor(pts[:, 0].min())) - 2, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - 2, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + 3, w)
    y1 = min(int(np.ceil(pts[:, 1].max())) + 3, h)
    if x0 >= x1 or y0 >= y1:  # the crop lies entirely outside the image: all black
        return np.zeros((1, 1, img.shape[2]), dtype=np.float64), affine
    reach = int(_TRUNCATE * sigma + 0.5) + 1
    bx0, by0 = max(x0 - reach, 0), max(y0 - reach, 0)
    bx1, by1 = min(x1 + reach, w), min(y1 + reach, h)
    region = gaussian_filter(img[by0:by1, bx0:bx1].astype(np.float64), (sigma, sigma, 0), mode="nearest", truncate=_TRUNCATE)
    region = np.ascontiguousarray(region[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0])
    shifted = affine.copy()
    shifted[:, 2] += affine[:, 0] * x0 + affine[:, 1] * y0
    return region, shifted


def make_crops(img_bgr: np.ndarray, boxes: np.ndarray, cfg: HMR2Config) -> CropBatch:
    """Crops of ``boxes`` (N, 4 xyxy pixels) from a BGR uint8 (H, W, 3) image."""
    s = cfg.image_size
    centers, sizes = box_centers_sizes(boxes, cfg.bbox_shape)
    mean = 255.0 * np.asarray(cfg.image_mean, dtype=np.float64)
    std = 255.0 * np.asarray(cfg.image_std, dtype=np.float64)
    n = len(centers)
    out = np.empty((n, 3, s, s), dtype=np.float32)
    sigmas = np.zeros(n, dtype=np.float64)
    affines = np.empty((n, 2, 3), dtype=np.float64)
    for i in range(n):
        affine = crop_affine(centers[i, 0], centers[i, 1], sizes[i], s)
        affines[i] = affine
        sigma = blur_sigma_for(sizes[i], s)
        sigmas[i] = sigma
        src, warp = (img_bgr, affine) if sigma == 0 else _blurred_region(img_bgr, affine, s, sigma)
        patch = cv2.warpAffine(src, warp, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        chw = patch[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)  # BGR -> RGB, HWC -> CHW
        # The original normalises float32 pixels with float64 statistics, then stores float32.
        out[i] = ((chw - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    h, w = img_bgr.shape[:2]
    img_size = np.tile(np.array([w, h], dtype=np.float32), (n, 1))
    return CropBatch(img=out, box_center=centers, box_size=sizes, img_size=img_size, blur_sigma=sigmas, affine=affines)


def cam_crop_to_full(
    pred_cam: torch.Tensor, box_center: torch.Tensor, box_size: torch.Tensor, img_size: torch.Tensor, focal_length: torch.Tensor
) -> torch.Tensor:
    """Weak-perspective crop camera (s, tx, ty) -> translation for the full image (N, 3).

    For a pinhole camera with focal ``focal_length`` and principal point at the image centre.
    """
    img_w, img_h = img_size[:, 0], img_size[:, 1]
    bs = box_size * pred_cam[:, 0] + 1e-9
    tz = 2 * focal_length / bs
    tx = (2 * (box_center[:, 0] - img_w / 2.0) / bs) + pred_cam[:, 1]
    ty = (2 * (box_center[:, 1] - img_h / 2.0) / bs) + pred_cam[:, 2]
    return torch.stack([tx, ty, tz], dim=-1)


def full_image_focal(img_size: torch.Tensor, cfg: HMR2Config) -> torch.Tensor:
    """The demo's focal length for the full image: f / S * max(W, H), per row."""
    return cfg.focal_length / cfg.image_size * img_size.max(dim=1).values
