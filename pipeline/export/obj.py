"""Wavefront OBJ text of one triangle mesh."""

from __future__ import annotations

import numpy as np


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> str:
    """``v x y z`` lines (6 decimals) for (V, 3) ``vertices``, then ``f a b c`` lines for (F, 3)
    0-based ``faces`` (OBJ counts vertices from 1)."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3) + 1
    if len(f) and (f.min() < 1 or f.max() > len(v)):
        raise ValueError(f"expected face indices in [0, {len(v)}), got [{f.min() - 1}, {f.max() - 1}]")
    return ("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel()) + ("f %d %d %d\n" * len(f)) % tuple(f.ravel())
