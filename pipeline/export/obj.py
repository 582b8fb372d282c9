"""Wavefront OBJ: one triangle mesh as text, readable by Blender, MeshLab, trimesh and most tools.

4D-Humans' demo writes one ``.obj`` per person (``--save_mesh``) with the mesh in the camera
frame: SMPL vertices plus the full-image camera translation. `obj_text` writes what it is given
(callers add the translation); indices are 1-based as the format requires.
"""

from __future__ import annotations

import io

import numpy as np


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
    """An OBJ document of one mesh: ``vertices`` (V, 3) floats, ``faces`` (F, 3) 0-based vertex
    indices (SMPL's triangles). Vertices are written with 9 significant digits, so float32
    values read back exactly; no normals, texture coordinates or materials."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"expected vertices of shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"expected integer faces of shape (F, 3), got {f.dtype} {f.shape}")
    if not np.isfinite(v).all():
        raise ValueError("expected finite vertices, got NaN or infinite values")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"expected face indices in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    out = io.StringIO()
    out.write(f"# {len(v)} vertices, {len(f)} triangles\n")
    np.savetxt(out, v, fmt="v %.9g %.9g %.9g")
    np.savetxt(out, f.astype(np.int64) + 1, fmt="f %d %d %d")
    return out.getvalue()
