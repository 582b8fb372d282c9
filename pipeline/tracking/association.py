"""Association cost and assignment (PHALP ``nn_matching._pdist`` with ``EQ_019``, deep_sort matching).

The cost of a (track, detection) pair multiplies four cues:
``(1 + b0 * texture) * (1 + b1 * pose) * exp(loc / (0.1 + tanh c_xy) / b2) * exp(depth / (0.1 + tanh c_n) / b3)``.
The squared distances are evaluated in float32 in the expanded form ``|a|^2 + |b|^2 - 2 a.b``
as the reference does, so costs agree to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..models.phalp.config import PhalpConfig
from ..models.phalp.encoder import PhalpAppearanceEncoder

ORIGIN = 44


def _pdist_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances in float32, expanded form, clipped at 0 (deep_sort ``_pdist``)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a2, b2 = np.square(a).sum(axis=1), np.square(b).sum(axis=1)
    r2 = np.float32(-2.0) * np.dot(a, b.T) + a2[:, None] + b2[None, :]
    return np.clip(r2, np.float32(0.0), np.float32(np.inf))


@torch.no_grad()
def texture_distance(
    encoder: PhalpAppearanceEncoder,
    track_uv: np.ndarray,
    det_uv: np.ndarray,
    *,
    batch_size: int = 16,
    return_embeddings: bool = False,
):
    """Texture cue for K pairs of UV maps (PHALP ``get_uv_distance``): ``100 * |e_t - e_d|^2``.

    Both maps of a pair are restricted to the texels seen in both (all four channels zeroed
    elsewhere), re-encoded, and the embeddings divided by 1000. Inputs (K, 4, S, S).
    """
    param = next(encoder.parameters())
    device = param.device
    k = len(track_uv)
    r = np.zeros(k, dtype=np.float64)
    embs_t: list[np.ndarray] = []
    embs_d: list[np.ndarray] = []
    for start in range(0, k, max(1, batch_size)):
        t = torch.as_tensor(np.asarray(track_uv[start : start + batch_size]), dtype=torch.float32).to(device)
        d = torch.as_tensor(np.asarray(det_uv[start : start + batch_size]), dtype=torch.float32).to(device)
        both = (t[:, 3:4] > 0.5) & (d[:, 3:4] > 0.5)
        t = torch.where(both, t, 0.0)
        d = torch.where(both, d, 0.0)
        emb = encoder(torch.cat([t, d], dim=0).to(param.dtype)).flatten(1).float() / 10**3
        e_t, e_d = emb[: len(t)].cpu().numpy(), emb[len(t) :].cpu().numpy()
        r[start : start + len(t)] = np.sum((e_t - e_d) ** 2, axis=1) * 100
        if return_embeddings:
            embs_t.append(e_t)
            embs_d.append(e_d)
    if return_embeddings:
        return r, np.concatenate(embs_t), np.concatenate(embs_d)
    return r


@dataclass
class CostTerms:
    """Every factor of the cost matrix (rows = tracks, columns = detections), for inspection."""

    cost: np.ndarray  # float64, after nan_to_num and max(., 0)
    r_texture: np.ndarray  # float64; 0 where the texture was not needed (see `cost_matrix`)
    texture_computed: np.ndarray  # bool
    pose_distance: np.ndarray  # float32, before clipping
    loc_distance: np.ndarray  # float32
    c_xy: np.ndarray  # float32
    n_log: np.ndarray  # float32
    c_nlog: np.ndarray  # float32


class TextureCost(Protocol):
    """Texture cue for K (track, detection) pairs: rows/cols index the given map lists."""

    def __call__(
        self, track_uv: list[np.ndarray | None], det_uv: list[np.ndarray | None], rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray: ...


@dataclass
class EncoderTextureCost:
    """The reference's texture cue: `texture_distance` with PHALP's appearance encoder."""

    encoder: PhalpAppearanceEncoder
    uv_size: int = 256
    batch_size: int = 16

    def __call__(
        self, track_uv: list[np.ndarray | None], det_uv: list[np.ndarray | None], rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray:
        out = np.zeros(len(rows), dtype=np.float64)
        # With no texel seen in both maps, both encoder inputs are all zeros: identical embeddings
        # and a cue of exactly 0, so those pairs (and maps that are None) skip the encoder.
        seen_t = [None if m is None else np.asarray(m[3]) > 0.5 for m in track_uv]
        seen_d = [None if m is None else np.asarray(m[3]) > 0.5 for m in det_uv]
        todo = [
            k for k, (i, j) in enumerate(zip(rows, cols))
            if seen_t[i] is not None and seen_d[j] is not None and bool(np.any(seen_t[i] & seen_d[j]))
        ]
        # Stack a few batches at a time: K maps of 4x256x256 add up quickly.
        step = max(1, self.batch_size) * 4
        for s in range(0, len(todo), step):
            ks = todo[s : s + step]
            t_maps = np.stack([np.asarray(track_uv[rows[k]], np.float32) for k in ks])
            d_maps = np.stack([np.asarray(det_uv[cols[k]], np.float32) for k in ks])
            out[ks] = texture_distance(self.encoder, t_maps, d_maps, batch_size=self.batch_size)
        return out


def cost_matrix(
    track_pose: np.ndarray,
    track_loca: np.ndarray,
    track_uv: list[np.ndarray | None],
    det_pose: np.ndarray,
    det_loca: np.ndarray,
    det_uv: list[np.ndarray | None],
    config: PhalpConfig,
    texture_cost: TextureCost | None,
) -> CostTerms:
    """EQ_019 cost between T track samples and D detections.

    The texture factor ``1 + b0 * r`` is at least 1, so a pair whose other factors already exceed
    the matching threshold is rejected whatever its texture: its texture is not encoded (the
    decisions are the same; the reported cost is then a lower bound above the threshold). A UV
    map of None counts as fully unseen (texture cost of zero-masked maps).
    """
    b0, b1, b2, b3 = config.cost_betas
    n_t, n_d = len(track_pose), len(det_pose)
    pd = config.pose_vector_dims
    tp, dp = np.asarray(track_pose, dtype=np.float32)[:, :pd], np.asarray(det_pose, dtype=np.float32)[:, :pd]
    tl = np.asarray(track_loca, dtype=np.float32)
    dl = np.asarray(det_loca, dtype=np.float32)
    # One track at a time, as the reference's metric does: BLAS then sums in the same order.
    pose = np.zeros((n_t, n_d), dtype=np.float32)
    loc = np.zeros((n_t, n_d), dtype=np.float32)
    for i in range(n_t):
        pose[i] = _pdist_f32(tp[i : i + 1], dp)[0]
        loc[i] = np.sqrt(_pdist_f32(tl[i : i + 1, 2 * ORIGIN : 2 * ORIGIN + 2], dl[:, 2 * ORIGIN : 2 * ORIGIN + 2]))[0]
    c_xy = np.sqrt(tl[:, [93]] ** 2 + tl[:, [94]] ** 2)
    c_xy = np.tile(c_xy, (1, n_d))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        near = np.matmul(tl[:, [92]], np.float32(1.0) / dl[:, [92]].T)
        flip = near > 1
        near[flip] = np.float32(1.0) / near[flip]
        n_log = -np.log(near)
        c_nlog = np.tile(np.abs(np.log(np.float32(1.0) / tl[:, [95]])), (1, n_d))
        pose_c = np.minimum(pose, np.float32(config.pose_distance_clip))
        # Factors in float32 as the reference computes them, multiplied in float64 as it does.
        rest = (
            (1 + pose_c * b1).astype(np.float64)
            * np.exp(loc / (np.float32(0.1) + np.tanh(c_xy)) / np.float32(b2)).astype(np.float64)
            * np.exp(n_log / (np.float32(0.1) + np.tanh(c_nlog)) / np.float32(b3)).astype(np.float64)
        )
    r = np.zeros((n_t, n_d), dtype=np.float64)
    need = ~(rest > config.hungarian_th)  # NaN stays "needed": its cost becomes 0 below anyway
    need &= np.isfinite(rest)
    rows, cols = np.nonzero(need)
    if len(rows) and texture_cost is not None:
        r[rows, cols] = np.asarray(texture_cost(track_uv, det_uv, rows, cols), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        cost = (1 + r * b0) * rest
    cost = np.maximum(np.nan_to_num(cost), 0.0)
    return CostTerms(
        cost=cost, r_texture=r, texture_computed=need, pose_distance=pose, loc_distance=loc, c_xy=c_xy,
        n_log=n_log, c_nlog=c_nlog,
    )


@dataclass
class Assignment:
    matches: list[tuple[int, int]]  # (row, column) in ascending row order
    unmatched_rows: list[int]  # in the reference's order (see `assign`)
    unmatched_cols: list[int]
    clipped: np.ndarray


def assign(cost: np.ndarray, threshold: float) -> Assignment:
    """deep_sort ``min_cost_matching`` + ``matching_simple`` with SciPy's solver.

    Costs above ``threshold`` are set to ``threshold + 1e-5``; solver pairs above the threshold
    are rejected. Unmatched columns: those the solver left out (ascending), then those of
    rejected pairs (row order). Unmatched rows: iteration order of the Python set difference
    ``set(rows) - set(matched rows)``, which is exactly how the reference orders them.
    """
    n_t, n_d = cost.shape
    if n_t == 0 or n_d == 0:
        return Assignment([], list(range(n_t)), list(range(n_d)), cost.copy())
    clipped = cost.copy()
    clipped[clipped > threshold] = threshold + 1e-5
    rows, cols = linear_sum_assignment(clipped)
    assigned_cols = set(int(c) for c in cols)
    unmatched_cols = [j for j in range(n_d) if j not in assigned_cols]
    matches: list[tuple[int, int]] = []
    for r_, c_ in zip(rows.tolist(), cols.tolist()):
        if clipped[r_, c_] > threshold:
            unmatched_cols.append(c_)
        else:
            matches.append((r_, c_))
    unmatched_rows = list(set(range(n_t)) - set(r_ for r_, _ in matches))
    return Assignment(matches, unmatched_rows, unmatched_cols, clipped)
