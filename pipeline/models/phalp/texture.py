"""UV texture sampling of a person from its crop, as 4D-Humans feeds PHALP.

Corresponds to ``HMR2023TextureSampler.forward`` in 4D-Humans' ``track.py``: surface points of the
predicted mesh, one per texel of PHALP's UV atlas (``bmap_256.npy`` barycentric weights inside
face ``fmap_256.npy``), are projected into the 256x256 crop; a texel is visible when its depth is
not behind the rendered depth map (within 1e-4); the crop's RGBA is sampled bilinearly there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.raster import rasterize_depth

from .encoder import process_uv_image


class PhalpTextureSampler(nn.Module):
    """Crop RGBA (B, 4, S, S) + mesh in the crop camera -> UV images (B, 4, U, U).

    ``tex_bmap`` (U, U, 3) and ``tex_fmap`` (U, U) are PHALP's atlas; ``faces`` (F, 3) the SMPL faces.
    """

    tex_bmap: torch.Tensor  # buffers
    tex_fmap: torch.Tensor
    faces: torch.Tensor

    def __init__(
        self,
        bmap: np.ndarray,
        fmap: np.ndarray,
        faces: np.ndarray,
        *,
        focal_length: float = 5000.0,
        image_size: int = 256,
    ) -> None:
        super().__init__()
        bmap = np.asarray(bmap)
        fmap = np.asarray(fmap)
        if bmap.shape[:2] != fmap.shape or bmap.shape[-1] != 3:
            raise ValueError(f"expected bmap (U, U, 3) and fmap (U, U), got {bmap.shape} and {fmap.shape}")
        faces = np.asarray(faces).astype(np.int64)
        if fmap.max() >= len(faces):
            raise ValueError(f"fmap names face {int(fmap.max())}, but the mesh has {len(faces)} faces")
        self.register_buffer("tex_bmap", torch.tensor(bmap, dtype=torch.float32), persistent=False)
        self.register_buffer("tex_fmap", torch.tensor(fmap, dtype=torch.long), persistent=False)
        self.register_buffer("faces", torch.from_numpy(faces), persistent=False)
        self.focal_length = float(focal_length)
        self.image_size = int(image_size)

    @torch.no_grad()
    def forward(self, crop_rgba: torch.Tensor, vertices: torch.Tensor, cam_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``crop_rgba``: ImageNet-normalised RGB + mask in [0, 1]; ``vertices`` (B, V, 3) metres;
        ``cam_t`` (B, 3) crop-camera translation. Returns ``uv_image`` (raw) and ``uv_vector``
        (processed for the appearance encoder)."""
        b = crop_rgba.shape[0]
        device = crop_rgba.device
        verts = vertices.to(device, torch.float32) + cam_t.to(device, torch.float32)[:, None, :]
        valid = self.tex_fmap >= 0
        face_vids = self.faces[self.tex_fmap[valid]]  # (N, 3)
        weights = self.tex_bmap[valid]  # (N, 3)
        map_verts = torch.einsum("bnij,ni->bnj", verts[:, face_vids], weights)  # (B, N, 3)
        half = self.image_size / 2
        grid = (self.focal_length / half) * map_verts[..., :2] / map_verts[..., 2:3]  # normalised [-1, 1]
        depth = rasterize_depth(verts, self.faces, focal=self.focal_length, image_size=self.image_size)
        grid_s = grid[:, None].to(crop_rgba.dtype)
        rend = F.grid_sample(depth[:, None], grid_s.float(), align_corners=False)[:, 0, 0]  # (B, N)
        rgba = F.grid_sample(crop_rgba.float(), grid_s.float(), align_corners=False)[:, :, 0]  # (B, 4, N)
        visible = map_verts[..., 2] <= rend + 1e-4
        rgba[:, 3] = torch.where(visible, rgba[:, 3], torch.zeros((), device=device))
        size = self.tex_fmap.shape[0]
        uv_image = torch.zeros(b, 4, size, size, dtype=torch.float32, device=device)
        uv_image[:, :, valid] = rgba
        return {"uv_image": uv_image, "uv_vector": process_uv_image(uv_image), "depth": depth}
