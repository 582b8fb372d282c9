"""A small PyTorch rasterizer (CPU and GPU): the texture sampler's depth map and the overlay renderer.

4D-Humans renders a depth map of the predicted mesh with neural_renderer (``mode='depth'``,
camera ``K`` with the crop's focal length and centre, ``R = I``, ``t = 0``, both face sides drawn
since ``fill_back`` is on by default, background at ``far = 100``). This does the same with plain
tensor operations: every face is expanded to the pixels of its screen bounding box, pixel centres
are tested against the triangle with barycentric coordinates, depth is interpolated perspective-
correctly (linear in 1/z, as neural_renderer) and the nearest surface per pixel kept with a
scatter-min.

`rasterize_depth` is what the texture step needs (a square image, depth only). `rasterize` also
says which face is nearest at each pixel, for any image size (principal point at the image
centre), which is what shading meshes over a video frame needs (`pipeline.render.overlay`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_FAR = 100.0
DEFAULT_NEAR = 0.1

ImageSize = int | tuple[int, int]  # a square side, or (height, width)


def image_hw(image_size: ImageSize) -> tuple[int, int]:
    """(height, width) of a square side or of an (height, width) pair."""
    if isinstance(image_size, (tuple, list)):
        h, w = image_size
        return int(h), int(w)
    return int(image_size), int(image_size)


def project(vertices: torch.Tensor, focal: float, image_size: ImageSize) -> torch.Tensor:
    """Camera-frame points (..., 3) -> pixel coordinates (..., 2): ``f * xy / z + (W / 2, H / 2)``."""
    h, w = image_hw(image_size)
    z = vertices[..., 2:3]
    if h == w:
        return focal * vertices[..., :2] / z + w / 2.0
    centre = torch.tensor([w / 2.0, h / 2.0], dtype=vertices.dtype, device=vertices.device)
    return focal * vertices[..., :2] / z + centre


@dataclass
class Fragments:
    """The nearest surface at every pixel of B images."""

    depth: torch.Tensor  # (B, H, W) float32 camera z; ``far`` where no face covers the pixel
    face: torch.Tensor  # (B, H, W) int64 index into the faces; -1 where no face covers the pixel


@torch.no_grad()
def rasterize_depth(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    *,
    focal: float,
    image_size: ImageSize,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    cull_backfaces: bool = False,
    max_pairs: int = 1 << 23,
) -> torch.Tensor:
    """Depth maps (B, H, W) of meshes (B, V, 3) in camera coordinates (x right, y down, z forward).

    Pixel (row i, column j) samples the image point ``(j + 0.5, i + 0.5)``; pixels no face covers
    hold ``far``. ``cull_backfaces`` drops faces whose projected winding is clockwise on screen
    (neural_renderer's default draws both sides, hence False). ``max_pairs`` bounds the
    (face, pixel) candidates processed at once, to bound memory.
    """
    return _rasterize(vertices, faces, focal, image_size, near, far, cull_backfaces, max_pairs, with_faces=False).depth


@torch.no_grad()
def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    *,
    focal: float,
    image_size: ImageSize,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    cull_backfaces: bool = False,
    max_pairs: int = 1 << 23,
) -> Fragments:
    """`rasterize_depth` plus the index of the face seen at each pixel (ties: the lower index).

    The depth is the same as `rasterize_depth`'s, bit for bit: each candidate's depth and face
    index are packed into one int64 (the float's bits above, the index below; positive floats
    order like their bits), so one scatter-min keeps both.
    """
    return _rasterize(vertices, faces, focal, image_size, near, far, cull_backfaces, max_pairs, with_faces=True)


def _rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    focal: float,
    image_size: ImageSize,
    near: float,
    far: float,
    cull_backfaces: bool,
    max_pairs: int,
    *,
    with_faces: bool,
) -> Fragments:
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"expected vertices of shape (B, V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"expected faces of shape (F, 3), got {tuple(faces.shape)}")
    if not 0 < near < far:
        raise ValueError(f"expected 0 < near < far, got near={near}, far={far}")
    device = vertices.device
    b = vertices.shape[0]
    h, w = image_hw(image_size)
    verts = vertices.to(torch.float32)
    faces = faces.to(device=device, dtype=torch.long)
    n_faces = faces.shape[0]
    depth = torch.full((b * h * w,), float(far), dtype=torch.float32, device=device)
    key = None
    if with_faces:
        far_bits = int(torch.tensor([float(far)], dtype=torch.float32).view(torch.int32).to(torch.int64).item())
        key = torch.full((b * h * w,), (far_bits << 32) | 0xFFFFFFFF, dtype=torch.int64, device=device)

    def done() -> Fragments:
        if key is None:
            return Fragments(depth=depth.view(b, h, w), face=torch.empty(0, dtype=torch.long, device=device))
        bits = (key >> 32).to(torch.int32)
        face = key & 0xFFFFFFFF
        face = torch.where(face == 0xFFFFFFFF, torch.full_like(face, -1), face)
        return Fragments(depth=bits.view(torch.float32).view(b, h, w), face=face.view(b, h, w))

    if b == 0 or n_faces == 0:
        return done()

    tri = verts[:, faces]  # (B, F, 3, 3)
    z = tri[..., 2]  # (B, F, 3)
    xy = project(tri, focal, (h, w))  # (B, F, 3, 2)
    ok = (z > near).all(-1) & torch.isfinite(xy).all(-1).all(-1)
    x0, y0 = xy[..., 0, 0], xy[..., 0, 1]
    e1x, e1y = xy[..., 1, 0] - x0, xy[..., 1, 1] - y0
    e2x, e2y = xy[..., 2, 0] - x0, xy[..., 2, 1] - y0
    area = e1x * e2y - e1y * e2x  # twice the signed screen area
    ok &= area.abs() > 1e-12
    if cull_backfaces:
        ok &= area > 0
    # Pixel index ranges whose centres can fall inside: ceil(min - 0.5) .. floor(max - 0.5).
    last = torch.tensor([w - 1, h - 1], dtype=xy.dtype, device=device)
    lo = torch.minimum(torch.ceil(xy.amin(dim=2) - 0.5).clamp(min=0), last)
    hi = torch.minimum(torch.floor(xy.amax(dim=2) - 0.5).clamp(min=-1), last)
    lo = torch.where(ok[..., None], lo, torch.zeros_like(lo))
    hi = torch.where(ok[..., None], hi, torch.full_like(hi, -1.0))
    lo_i, hi_i = lo.long(), hi.long()
    fw = (hi_i[..., 0] - lo_i[..., 0] + 1).clamp(min=0)
    fh = (hi_i[..., 1] - lo_i[..., 1] + 1).clamp(min=0)
    count = (fw * fh).reshape(-1)  # candidates per (batch, face)
    face_ids = torch.nonzero(count > 0).squeeze(1)
    if face_ids.numel() == 0:
        return done()
    flat = lambda t: t.reshape(-1)[face_ids]  # noqa: E731
    counts = count[face_ids]
    fx0, fy0, fe1x, fe1y, fe2x, fe2y, farea = (flat(t) for t in (x0, y0, e1x, e1y, e2x, e2y, area))
    fz = z.reshape(-1, 3)[face_ids]
    flo_x, flo_y, fwidth = flat(lo_i[..., 0]), flat(lo_i[..., 1]), flat(fw)
    fbatch = face_ids // n_faces
    findex = face_ids % n_faces

    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    chunk_start = 0
    n = face_ids.numel()
    while chunk_start < n:
        # Faces [chunk_start, chunk_end) whose candidates fit in max_pairs (at least one face).
        base = starts[chunk_start]
        chunk_end = int(torch.searchsorted(ends, base + max_pairs, right=True).item())
        chunk_end = max(chunk_end, chunk_start + 1)
        sel = slice(chunk_start, chunk_end)
        c = counts[sel]
        owner = torch.repeat_interleave(torch.arange(chunk_start, chunk_end, device=device), c)
        local = torch.arange(int(c.sum().item()), device=device) - (starts[owner] - base)
        px = flo_x[owner] + local % fwidth[owner]
        py = flo_y[owner] + local // fwidth[owner]
        cx, cy = px.to(torch.float32) + 0.5, py.to(torch.float32) + 0.5
        dx, dy = cx - fx0[owner], cy - fy0[owner]
        a = farea[owner]
        w1 = (dx * fe2y[owner] - dy * fe2x[owner]) / a
        w2 = (fe1x[owner] * dy - fe1y[owner] * dx) / a
        w0 = 1.0 - w1 - w2
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        zz = fz[owner]
        inv = w0 / zz[:, 0] + w1 / zz[:, 1] + w2 / zz[:, 2]
        zp = 1.0 / inv
        inside &= (zp > near) & (zp < far)
        pix = (fbatch[owner] * h * w + py * w + px)[inside]
        if key is None:
            depth.scatter_reduce_(0, pix, zp[inside], reduce="amin", include_self=True)
        else:
            packed = (zp[inside].view(torch.int32).to(torch.int64) << 32) | findex[owner][inside]
            key.scatter_reduce_(0, pix, packed, reduce="amin", include_self=True)
        chunk_start = chunk_end
    return done()
