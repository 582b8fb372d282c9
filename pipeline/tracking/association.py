"""Association cost and assignment (PHALP ``nn_matching._pdist`` with ``EQ_019``, deep_sort matching).

The cost of a (track, detection) pair multiplies four cues:
``(1 + b0 * texture) * (1 + b1 * pose) * exp(loc / (0.1 + tanh c_xy) / b2) * exp(depth / (0.1 + tanh c_n) / b3)``.
The squared distances are evaluated in float32 in the expanded form ``|a|^2 + |b|^2 - 2 a.b``
as the reference does, so costs agree to float32 rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..models.phalp.config import PhalpConfig
from ..models.phalp.encoder import PhalpAppearanceEncoder

logger = logging.getLogger(__name__)

ORIGIN = 44

# Which (track, detection) pairs get their texture cue encoded (see `cost_matrix`).
TexturePairs = Literal["all", "decisive"]


def _pdist_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances in float32, expanded form, clipped at 0 (deep_sort ``_pdist``).

    Both sides are made contiguous first, as the reference's arrays are: numpy takes another
    product path for strided views (one whose sums round as a fused multiply-add), and near-zero
    distances, which the location factor amplifies, then differ from the reference's by ulps."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
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
class TextureStats:
    """What an `EncoderTextureCost` did, summed over its calls."""

    calls: int = 0  # calls (one per frame, or per refinement round in decisive mode)
    pairs: int = 0  # (track, detection) pairs asked for
    identical: int = 0  # pairs whose two encoder inputs were identical (cue 0, not encoded)
    maps_encoded: int = 0  # encoder inputs actually run (two per pair without any sharing)
    encoder_calls: int = 0  # batches


@dataclass
class EncoderTextureCost:
    """The reference's texture cue (`texture_distance`'s numbers) with as few encoder inputs as exact.

    Per call (one frame's needed pairs): every map is converted to float32 and its seen mask taken
    once, not once per pair; an encoder input that is the same for several pairs is encoded once
    (a map restricted to the common texels equals the map restricted to its own seen texels when
    the other map sees all of them, e.g. a track that has seen everything the detection sees); a
    pair whose two inputs are identical has a cue of exactly 0 and is not encoded; all inputs of
    the call go through the encoder in batches of ``batch_size``, channels-last. The encoder's
    output for one input does not depend on what else is in its batch, so the cues equal
    `texture_distance`'s pair by pair. ``stats`` counts what was done (tests, bench).
    """

    encoder: PhalpAppearanceEncoder
    uv_size: int = 256
    batch_size: int = 16
    stats: TextureStats = field(default_factory=TextureStats)

    def __call__(
        self, track_uv: list[np.ndarray | None], det_uv: list[np.ndarray | None], rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray:
        out = np.zeros(len(rows), dtype=np.float64)
        self.stats.calls += 1
        self.stats.pairs += len(rows)
        maps: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, int]] = {}

        def prepared(side: str, index: int, source: list[np.ndarray | None]):
            key = (side, index)
            if key not in maps:
                m = source[index]
                if m is None:
                    maps[key] = None  # type: ignore[assignment]
                else:
                    arr = np.ascontiguousarray(m, dtype=np.float32)
                    seen = arr[3] > 0.5
                    maps[key] = (arr, seen, int(np.count_nonzero(seen)))
            return maps[key]

        # Encoder inputs: key -> (map, mask); pairs -> (k, track input key, detection input key).
        inputs: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        pairs: list[tuple[int, tuple, tuple]] = []
        for k, (i, j) in enumerate(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist())):
            t, d = prepared("t", i, track_uv), prepared("d", j, det_uv)
            if t is None or d is None:
                continue  # no texel seen in both: both inputs all zeros, a cue of exactly 0
            both = t[1] & d[1]
            n_both = int(np.count_nonzero(both))
            if n_both == 0:
                continue
            # ``both`` is a subset of each map's own mask; equal counts mean equal masks.
            t_key = ("t", i) if n_both == t[2] else ("t", i, "d", j)
            d_key = ("d", j) if n_both == d[2] else ("d", j, "t", i)
            t_mask = t[1] if n_both == t[2] else both
            d_mask = d[1] if n_both == d[2] else both
            if np.array_equal(t[0][:, both], d[0][:, both]):
                self.stats.identical += 1
                continue  # identical encoder inputs: identical embeddings, a cue of exactly 0
            inputs.setdefault(t_key, (t[0], t_mask))
            inputs.setdefault(d_key, (d[0], d_mask))
            pairs.append((k, t_key, d_key))
        if not pairs:
            return out
        keys = list(inputs)
        emb = self._embed([inputs[key] for key in keys])
        row_of = {key: n for n, key in enumerate(keys)}
        e_t = emb[[row_of[p[1]] for p in pairs]]
        e_d = emb[[row_of[p[2]] for p in pairs]]
        out[[p[0] for p in pairs]] = np.sum((e_t - e_d) ** 2, axis=1) * 100
        return out

    @torch.inference_mode()
    def _embed(self, items: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Embeddings / 1000 (float32, (N, D)) of maps zeroed outside their masks, in batches."""
        param = next(self.encoder.parameters())
        step = max(1, self.batch_size)
        out = []
        zero = np.float32(0.0)
        for s in range(0, len(items), step):
            chunk = items[s : s + step]
            batch = np.stack([np.where(mask, arr, zero) for arr, mask in chunk])
            x = torch.from_numpy(batch).to(param.device, param.dtype).contiguous(memory_format=torch.channels_last)
            out.append((self.encoder(x).flatten(1).float() / 10**3).cpu().numpy())
            self.stats.encoder_calls += 1
            self.stats.maps_encoded += len(chunk)
        return np.concatenate(out)


def cost_matrix(
    track_pose: np.ndarray,
    track_loca: np.ndarray,
    track_uv: list[np.ndarray | None],
    det_pose: np.ndarray,
    det_loca: np.ndarray,
    det_uv: list[np.ndarray | None],
    config: PhalpConfig,
    texture_cost: TextureCost | None,
    texture_pairs: TexturePairs = "all",
) -> CostTerms:
    """EQ_019 cost between T track samples and D detections.

    The texture factor ``1 + b0 * r`` is at least 1, so a pair whose other factors already exceed
    the matching threshold is rejected whatever its texture: its texture is not encoded (the
    decisions are the same; the reported cost is then a lower bound above the threshold). A UV
    map of None counts as fully unseen (texture cost of zero-masked maps).

    ``texture_pairs="all"`` (default) encodes every other pair, so every cost under the threshold
    is exact. ``"decisive"`` encodes only the pairs the assignment needs (`_fill_decisive`): the
    decisions of `assign` are provably the same, but the reported cost of a pair whose texture was
    not encoded (``texture_computed`` False) is a lower bound, possibly under the threshold.
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
    computed = np.zeros((n_t, n_d), dtype=bool)

    def fill(rows: np.ndarray, cols: np.ndarray) -> None:
        if len(rows) and texture_cost is not None:
            r[rows, cols] = np.asarray(texture_cost(track_uv, det_uv, rows, cols), dtype=np.float64)
        computed[rows, cols] = True

    def combine() -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            c = (1 + r * b0) * rest
        return np.maximum(np.nan_to_num(c), 0.0)

    if texture_pairs == "all" or texture_cost is None:
        fill(*np.nonzero(need))
    elif texture_pairs == "decisive":
        _fill_decisive(need, computed, fill, combine, config.hungarian_th)
    else:
        raise ValueError(f"expected texture_pairs 'all' or 'decisive', got {texture_pairs!r}")
    cost = combine()
    return CostTerms(
        cost=cost, r_texture=r, texture_computed=computed & need, pose_distance=pose, loc_distance=loc, c_xy=c_xy,
        n_log=n_log, c_nlog=c_nlog,
    )


def _fill_decisive(
    need: np.ndarray,
    computed: np.ndarray,
    fill: Callable[[np.ndarray, np.ndarray], None],
    combine: Callable[[], np.ndarray],
    threshold: float,
) -> None:
    """Encode textures until the assignment of the full cost matrix is known, without the rest.

    A pair not yet encoded is given its lower bound (texture cue 0; every factor of the cost and
    the clipping are monotone, so the true clipped cost is at least that). Round after round, the
    solver's assignment on that matrix has its not-yet-encoded pairs encoded, until it uses only
    exact entries. That assignment is then optimal for the true matrix too (its cost is exact, any
    other costs at least its lower bound). If it is also the unique optimum by a margin (each of
    its pairs forbidden in turn costs more), SciPy on the full matrix cannot return anything else,
    and `assign` on this matrix returns it (same solver, same matrix as the last round). Any tie
    or near-tie (e.g. two lost tracks and two new detections at the clipped cost, where the
    solver's tie-breaking orders the new tracks) falls back to encoding every needed pair, which
    is exactly the ``"all"`` computation.
    """
    while True:
        clipped = clip_costs(combine(), threshold)
        rows, cols = linear_sum_assignment(clipped)
        todo = need[rows, cols] & ~computed[rows, cols]
        if np.any(todo):
            fill(rows[todo], cols[todo])
            continue
        if _unique_optimum(clipped, rows, cols, threshold):
            return
        break
    rest_rows, rest_cols = np.nonzero(need & ~computed)
    logger.debug("decisive texture pairs: tie, %d more pairs encoded", len(rest_rows))
    fill(rest_rows, rest_cols)


def _unique_optimum(clipped: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float) -> bool:
    """Whether (rows, cols) beats every other assignment of ``clipped`` by a safe margin.

    Any other assignment of the same size leaves out one of its pairs, so the best one leaving out
    each pair in turn is the runner-up. The margin (1e-6 of the clipped cost per pair) covers
    float rounding in the solver and in the cues, far below any cue difference that matters.
    """
    best = float(clipped[rows, cols].sum())
    margin = 1e-6 * (threshold + 1.0) * max(1, len(rows))
    big = 1e3 * (threshold + 1.0) * max(clipped.shape)
    for r_, c_ in zip(rows.tolist(), cols.tolist()):
        saved = clipped[r_, c_]
        clipped[r_, c_] = big
        try:
            alt_r, alt_c = linear_sum_assignment(clipped)
            alt = float(clipped[alt_r, alt_c].sum())
        finally:
            clipped[r_, c_] = saved
        if not alt - best > margin:
            return False
    return True


def clip_costs(cost: np.ndarray, threshold: float) -> np.ndarray:
    """deep_sort's gating: costs above ``threshold`` become ``threshold + 1e-5`` (a copy)."""
    clipped = cost.copy()
    clipped[clipped > threshold] = threshold + 1e-5
    return clipped


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
    clipped = clip_costs(cost, threshold)
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
