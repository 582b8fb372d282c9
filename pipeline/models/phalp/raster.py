"""A small depth rasterizer in PyTorch (CPU and GPU), for the texture sampler's visibility test.

4D-Humans renders a depth map of the predicted mesh with neural_renderer (``mode='depth'``,
camera ``K`` with the crop's focal length and centre, ``R = I``, ``t = 0``, both face sides drawn
since ``fill_back`` is on by default, background at ``far = 100``). This does the same with plain
tensor operations: every face is expanded to the pixels of its screen bounding box, pixel centres
are tested against the triangle with barycentric coordinates, depth is interpolated perspective-
correctly (linear in 1/z, as neural_renderer) and the nearest surface per pixel kept with a
scatter-min.
"""

from __future__ import annotations

import torch

DEFAULT_FAR = 100.0
DEFAULT_NEAR = 0.1


def project(vertices: torch.Tensor, focal: float, image_size: int) -> torch.Tensor:
    """Camera-frame points (..., 3) -> pixel coordinates (..., 2): ``f * xy / z + size / 2``."""
    z = vertices[..., 2:3]
    return focal * vertices[..., :2] / z + image_size / 2.0


@torch.no_grad()
def rasterize_depth(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    *,
    focal: float,
    image_size: int,
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    cull_backfaces: bool = False,
    max_pairs: int = 1 << 23,
) -> torch.Tensor:
    """Depth maps (B, S, S) of meshes (B, V, 3) in camera coordinates (x right, y down, z forward).

    Pixel (row i, column j) samples the image point ``(j + 0.5, i + 0.5)``; pixels no face covers
    hold ``far``. ``cull_backfaces`` drops faces whose projected winding is clockwise on screen
    (neural_renderer's default draws both sides, hence False). ``max_pairs`` bounds the
    (face, pixel) candidates processed at once, to bound memory.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"expected vertices of shape (B, V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"expected faces of shape (F, 3), got {tuple(faces.shape)}")
    device = vertices.device
    b = vertices.shape[0]
    s = int(image_size)
    verts = vertices.to(torch.float32)
    faces = faces.to(device=device, dtype=torch.long)
    depth = torch.full((b * s * s,), float(far), dtype=torch.float32, device=device)
    if b == 0 or faces.shape[0] == 0:
        return depth.view(b, s, s)

    tri = verts[:, faces]  # (B, F, 3, 3)
    z = tri[..., 2]  # (B, F, 3)
    with torch.no_grad():
        xy = project(tri, focal, s)  # (B, F, 3, 2)
    ok = (z > near).all(-1) & torch.isfinite(xy).all(-1).all(-1)
    x0, y0 = xy[..., 0, 0], xy[..., 0, 1]
    e1x, e1y = xy[..., 1, 0] - x0, xy[..., 1, 1] - y0
    e2x, e2y = xy[..., 2, 0] - x0, xy[..., 2, 1] - y0
    area = e1x * e2y - e1y * e2x  # twice the signed screen area
    ok &= area.abs() > 1e-12
    if cull_backfaces:
        ok &= area > 0
    # Pixel index ranges whose centres can fall inside: ceil(min - 0.5) .. floor(max - 0.5).
    lo = torch.ceil(xy.amin(dim=2) - 0.5).clamp(0, s - 1)
    hi = torch.floor(xy.amax(dim=2) - 0.5).clamp(-1, s - 1)
    lo = torch.where(ok[..., None], lo, torch.zeros_like(lo))
    hi = torch.where(ok[..., None], hi, torch.full_like(hi, -1.0))
    lo_i, hi_i = lo.long(), hi.long()
    w = (hi_i[..., 0] - lo_i[..., 0] + 1).clamp(min=0)
    h = (hi_i[..., 1] - lo_i[..., 1] + 1).clamp(min=0)
    count = (w * h).reshape(-1)  # candidates per (batch, face)
    face_ids = torch.nonzero(count > 0).squeeze(1)
    if face_ids.numel() == 0:
        return depth.view(b, s, s)
    flat = lambda t: t.reshape(-1)[face_ids]  # noqa: E731
    counts = count[face_ids]
    fx0, fy0, fe1x, fe1y, fe2x, fe2y, farea = (flat(t) for t in (x0, y0, e1x, e1y, e2x, e2y, area))
    fz = z.reshape(-1, 3)[face_ids]
    flo_x, flo_y, fw = flat(lo_i[..., 0]), flat(lo_i[..., 1]), flat(w)
    fbatch = face_ids // faces.shape[0]

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
        px = flo_x[owner] + local % fw[owner]
        py = flo_y[owner] + local // fw[owner]
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
        pix = (fbatch[owner] * s * s + py * s + px)[inside]
        depth.scatter_reduce_(0, pix, zp[inside], reduce="amin", include_self=True)
        chunk_start = chunk_end
    return depth.view(b, s, s)
