"""The depth rasterizer and texture sampler on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.phalp.texture import PhalpTextureSampler
from pipeline.raster import DEFAULT_FAR, rasterize_depth

F = 256.0  # focal length in pixels
S = 64  # image size


def _quad(z: float, half: float, x0: float = 0.0, y0: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A square at depth z facing the camera (two triangles, counter-clockwise on screen)."""
    v = torch.tensor(
        [[x0 - half, y0 - half, z], [x0 + half, y0 - half, z], [x0 + half, y0 + half, z], [x0 - half, y0 + half, z]]
    )
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, f


def _pixel(x: float, y: float, z: float) -> tuple[int, int]:
    """Row, column of the pixel whose centre sees camera point (x, y, z)."""
    u, v = F * x / z + S / 2, F * y / z + S / 2
    return int(np.floor(v)), int(np.floor(u))


def test_single_quad_depth_and_background():
    v, f = _quad(5.0, 0.3)
    d = rasterize_depth(v[None], f, focal=F, image_size=S)[0]
    assert d.shape == (S, S)
    r, c = _pixel(0.0, 0.0, 5.0)
    assert d[r, c] == pytest.approx(5.0)
    assert d[0, 0] == DEFAULT_FAR
    # The square spans +-0.3 * 256 / 5 = +-15.36 px around the centre: 30 or 31 pixel centres.
    covered = (d < DEFAULT_FAR).sum().item()
    assert 30 * 30 <= covered <= 31 * 31


def test_nearest_surface_wins_whatever_the_order():
    back_v, back_f = _quad(6.0, 0.4)
    front_v, front_f = _quad(3.0, 0.1, x0=0.05)
    for order in (0, 1):
        parts = [(back_v, back_f), (front_v, front_f)][:: 1 if order == 0 else -1]
        verts = torch.cat([p[0] for p in parts])
        faces = torch.cat([parts[0][1], parts[1][1] + len(parts[0][0])])
        d = rasterize_depth(verts[None], faces, focal=F, image_size=S)[0]
        r, c = _pixel(0.05, 0.0, 3.0)
        assert d[r, c] == pytest.approx(3.0)
        r, c = _pixel(-0.3, 0.0, 6.0)  # beside the small front square: the back one
        assert d[r, c] == pytest.approx(6.0)


def test_back_faces_drawn_unless_culled():
    v, f = _quad(4.0, 0.3)
    flipped = f[:, [0, 2, 1]]
    r, c = _pixel(0.0, 0.0, 4.0)
    both = rasterize_depth(v[None], flipped, focal=F, image_size=S)[0]
    assert both[r, c] == pytest.approx(4.0)  # neural_renderer's fill_back draws both sides
    culled = rasterize_depth(v[None], flipped, focal=F, image_size=S, cull_backfaces=True)[0]
    assert (culled == DEFAULT_FAR).all()
    front = rasterize_depth(v[None], f, focal=F, image_size=S, cull_backfaces=True)[0]
    assert front[r, c] == pytest.approx(4.0)


def test_slanted_triangle_depth_is_perspective_correct():
    # Plane z = 4 + x: the depth seen through a pixel is where its ray meets the plane.
    v = torch.tensor([[-0.5, -0.5, 3.5], [0.5, -0.5, 4.5], [0.0, 0.6, 4.0]])
    f = torch.tensor([[0, 1, 2]])
    d = rasterize_depth(v[None], f, focal=F, image_size=S)[0]
    rows, cols = torch.nonzero(d < DEFAULT_FAR, as_tuple=True)
    assert len(rows) > 50
    u = (cols.float() + 0.5 - S / 2) / F  # ray direction x / z
    expected = 4.0 / (1.0 - u)  # z = 4 + x with x = u z
    torch.testing.assert_close(d[rows, cols], expected, rtol=1e-5, atol=1e-5)


def test_behind_camera_and_degenerate_faces_ignored():
    v = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.1, 0.1, 2.0]])
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    d = rasterize_depth(v[None], f, focal=F, image_size=S)[0]
    assert (d == DEFAULT_FAR).all()


def test_batch_and_chunking_agree():
    torch.manual_seed(0)
    v = torch.rand(3, 30, 3) * torch.tensor([0.8, 0.8, 1.0]) + torch.tensor([-0.4, -0.4, 2.0])
    f = torch.randint(0, 30, (40, 3))
    full = rasterize_depth(v, f, focal=F, image_size=S)
    small = rasterize_depth(v, f, focal=F, image_size=S, max_pairs=97)
    torch.testing.assert_close(full, small)
    for i in range(3):
        torch.testing.assert_close(full[i], rasterize_depth(v[i : i + 1], f, focal=F, image_size=S)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    torch.manual_seed(1)
    v = torch.rand(2, 50, 3) * torch.tensor([0.8, 0.8, 1.0]) + torch.tensor([-0.4, -0.4, 2.0])
    f = torch.randint(0, 50, (80, 3))
    cpu = rasterize_depth(v, f, focal=F, image_size=S)
    gpu = rasterize_depth(v.cuda(), f.cuda(), focal=F, image_size=S).cpu()
    torch.testing.assert_close(cpu, gpu, rtol=1e-5, atol=1e-5)


def _atlas_for_quads(n_quads: int, size: int = 16):
    """An atlas covering quad k's two faces in rows [k * size/n, (k+1) * size/n)."""
    fmap = -np.ones((size, size), dtype=np.int64)
    bmap = np.zeros((size, size, 3), dtype=np.float32)
    rows_per = size // n_quads
    for k in range(n_quads):
        for i in range(rows_per):
            for j in range(size):
                a, b = (j + 0.5) / size, (i + 0.5) / rows_per  # position on the quad, 0..1
                if a >= b:  # triangle (0, 1, 2): p = v0 + a (v1 - v0) + b (v2 - v1)
                    fmap[k * rows_per + i, j] = 2 * k
                    bmap[k * rows_per + i, j] = [1 - a, a - b, b]
                else:  # triangle (0, 2, 3)
                    fmap[k * rows_per + i, j] = 2 * k + 1
                    bmap[k * rows_per + i, j] = [1 - b, a, b - a]
    return bmap, fmap


def test_texture_sampling_reads_the_crop_and_hides_occluded_texels():
    size = 256
    # Quad 0 at depth 10 spanning the crop centre; quad 1, smaller, in front of its left half.
    v0, f0 = _quad(10.0, 0.2)
    v1, f1 = _quad(5.0, 0.1, x0=-0.1)
    verts = torch.cat([v0, v1])[None]
    faces = torch.cat([f0, f1 + 4])
    bmap, fmap = _atlas_for_quads(2)
    sampler = PhalpTextureSampler(bmap, fmap, faces.numpy(), focal_length=5000.0, image_size=size)
    # Crop: red channel = column / 255, green = row / 255, mask 1 everywhere.
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rgba = np.stack([xx / 255.0, yy / 255.0, np.zeros_like(xx), np.ones_like(xx)]).astype(np.float32)[None]
    out = sampler(torch.from_numpy(rgba), verts, torch.zeros(1, 3))
    uv = out["uv_image"][0].numpy()
    vis = uv[3, :8] > 0  # quad 0's texels
    # Quad 0 texel (i, j) sits at x = -0.2 + 0.4 * (j + 0.5) / 16 (y likewise over 8 rows); it is
    # hidden where its projection (500 x, 500 y px from the centre) falls on quad 1's projection
    # (1000 x in [-200, 0], 1000 y in [-100, 100]); 2 px margins keep edge pixels out of the test.
    xs = -0.2 + 0.4 * (np.arange(16) + 0.5) / 16
    ys = -0.2 + 0.4 * (np.arange(8) + 0.5) / 8
    X, Y = np.meshgrid(xs, ys)
    px, py = 500 * X, 500 * Y
    hidden = (px > -198) & (px < -2) & (np.abs(py) < 98)
    shown = (px < -202) | (px > 2) | (np.abs(py) > 102)
    assert hidden.any() and shown.any()
    assert not vis[hidden].any()
    assert vis[shown].all()
    # Visible texels carry the crop colour at their projection: u = 500 x + 128.
    u = 5000.0 * X / 10.0 + 128 - 0.5
    np.testing.assert_allclose(uv[0, :8][shown], (u / 255.0)[shown], atol=1e-4)
    # Quad 1 is in front of everything; its texels are seen where they land inside the crop
    # (1000 x px from the centre, the crop ends at -128 px), outside they read the zero border.
    px1 = 1000 * (-0.2 + 0.2 * (np.arange(16) + 0.5) / 16)
    inside = np.broadcast_to(px1 > -126, (8, 16))
    outside = np.broadcast_to(px1 < -130, (8, 16))
    assert (uv[3, 8:][inside] > 0).all() and (uv[3, 8:][outside] == 0).all()
    proc = out["uv_vector"][0].numpy()
    assert set(np.unique(proc[3])) <= {-1.0, 1.0}
