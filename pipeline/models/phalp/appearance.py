"""People in a frame -> PHALP UV textures and appearance embeddings (the 4D-Humans appearance step).

Crops follow PHALP's ``get_croped_image`` (``process_image`` / ``process_mask``: a square crop of
the box expanded to 192:256, resized to 256 with bilinear interpolation, zero border), the texture
sampling 4D-Humans' ``HMR2023TextureSampler``, the embedding ``HMAR.autoencoder_hmar(en=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ...errors import InputError
from .encoder import PhalpAppearanceEncoder
from .texture import PhalpTextureSampler

IMAGENET_MEAN = np.array([123.675, 116.280, 103.530])
IMAGENET_STD = np.array([58.395, 57.120, 57.375])


def crop_affine(center: np.ndarray, size: float, out: int = 256) -> np.ndarray:
    """PHALP ``gen_trans_from_patch_cv`` without rotation: image -> crop affine (2, 3)."""
    cx, cy = float(center[0]), float(center[1])
    src = np.array([[cx, cy], [cx, cy + size * 0.5], [cx + size * 0.5, cy]], dtype=np.float32)
    dst = np.array([[out * 0.5, out * 0.5], [out * 0.5, out], [out, out * 0.5]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def crop_person(
    image_bgr: np.ndarray, mask: np.ndarray | None, center: np.ndarray, size: float, out: int = 256
) -> np.ndarray:
    """(4, out, out) float32: ImageNet-normalised RGB and the mask in [0, 1], as 4D-Humans feeds HMR2."""
    m = crop_affine(center, size, out)
    patch = cv2.warpAffine(image_bgr, m, (out, out), flags=cv2.INTER_LINEAR)
    rgb: np.ndarray = patch[:, :, ::-1].astype(np.float32)  # float32 throughout; numpy's stubs type float32 / float32 as complex128
    rgb = (rgb - IMAGENET_MEAN.astype(np.float32)) / IMAGENET_STD.astype(np.float32)
    mask_u8 = (np.asarray(mask) > 0).astype(np.uint8) * 255
    mpatch = cv2.warpAffine(mask_u8, m, (out, out), flags=cv2.INTER_LINEAR).astype(np.float32)
    return np.concatenate([rgb.transpose(2, 0, 1), np.clip(mpatch, 0, 1)[None]], axis=0)


@dataclass
class AppearanceOutput:
    uv: np.ndarray  # (N, 4, U, U) float32, processed (the tracker's PersonObservation.uv)
    embedding: np.ndarray  # (N, D) float32 (PersonObservation.appearance)


class AppearanceModel:
    """Texture sampling + appearance encoder for the people of one frame."""

    def __init__(self, sampler: PhalpTextureSampler, encoder: PhalpAppearanceEncoder) -> None:
        self.sampler = sampler
        self.encoder = encoder

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        image_bgr: np.ndarray,
        crop_centers: np.ndarray,
        crop_sizes: np.ndarray,
        vertices: np.ndarray,
        cam_t: np.ndarray,
        masks: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
    ) -> AppearanceOutput:
        """UV maps and embeddings of N people.

        ``image_bgr`` (H, W, 3) uint8 BGR; ``crop_centers`` (N, 2) and ``crop_sizes`` (N,) the
        square crops (pixels) HMR2 saw; ``vertices`` (N, V, 3) and ``cam_t`` (N, 3) HMR2's mesh
        and crop-camera translation (focal length of the sampler, 5000 for a 256 crop);
        ``masks`` (N, H, W) person masks, or None to use each box in ``boxes`` (N, 4, xyxy).
        """
        image = np.asarray(image_bgr)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError("image_shape", f"expected an (H, W, 3) BGR image, got shape {image.shape}")
        n = len(crop_centers)
        u = self.sampler.tex_fmap.shape[0]
        if n == 0:
            return AppearanceOutput(np.zeros((0, 4, u, u), np.float32), np.zeros((0, 0), np.float32))
        crops = []
        for i in range(n):
            if masks is not None:
                mask = masks[i]
            elif boxes is not None:
                mask = np.zeros(image.shape[:2], dtype=bool)
                x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
                mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
            else:
                mask = np.ones(image.shape[:2], dtype=bool)
            crops.append(crop_person(image, mask, np.asarray(crop_centers[i]), float(crop_sizes[i]), self.sampler.image_size))
        dev = self.device
        rgba = torch.from_numpy(np.stack(crops)).to(dev)
        # copies: arrays that came through Ray's object store are read-only
        verts = torch.tensor(np.asarray(vertices), device=dev)
        out = self.sampler(rgba, verts, torch.tensor(np.asarray(cam_t), device=dev))
        emb = self.encoder.embed(out["uv_vector"])
        return AppearanceOutput(out["uv_vector"].cpu().numpy(), emb.float().cpu().numpy())
