"""The texture cue's fast paths give the decisions of the straightforward computation.

`EncoderTextureCost` must return `texture_distance`'s cues, and ``texture_pairs="decisive"``
(only the pairs the assignment needs) must give exactly the decisions of ``"all"`` while encoding
fewer pairs, ties and lost tracks included.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiny.phalp import write_tiny_phalp
from pipeline.tracking import Tracker
from pipeline.tracking.association import _fill_decisive, assign, texture_distance
from pipeline.tracking.loading import tracker_models_from_cache
from pipeline.tracking.synthetic import sequence
from pipeline.weights import CacheRoots

TH = 100.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    roots = CacheRoots.under(tmp_path_factory.mktemp("caches"))
    write_tiny_phalp(roots)
    return tracker_models_from_cache(roots, device="cpu", download=False)


def _decisions(ft):
    return (ft.matches, ft.unmatched_track_ids, ft.unmatched_detections, ft.new_track_ids, ft.deleted_track_ids)


def test_crowd_decisions_equal_and_fewer_pairs(models):
    """A crowd with crossings, people missing for a few frames and people leaving the image."""
    missing = {0: {4, 5}, 3: set(range(3, 7)), 5: {6}, 7: {2, 3}}
    frames = [f for f, _ in sequence(10, 9, seed=4, missing=missing, image_size=(720, 900))]
    full, lazy = Tracker(models), Tracker(models, texture_pairs="decisive")
    compared = 0
    for frame in frames:
        a = full.step(frame.frame_index, frame.people, frame.image_size)
        b = lazy.step(frame.frame_index, frame.people, frame.image_size)
        assert _decisions(a) == _decisions(b), frame.frame_index
        if a.cost is not None:
            compared += 1
            done = b.cost.texture_computed
            assert np.all(done <= a.cost.texture_computed)
            np.testing.assert_array_equal(b.cost.r_texture[done], a.cost.r_texture[done])
            assert np.all(b.cost.cost <= a.cost.cost)  # lower bounds where not encoded
    assert compared >= 6
    s_full, s_lazy = full._texture.stats, lazy._texture.stats
    assert s_full.pairs > 100
    assert s_lazy.pairs < 0.6 * s_full.pairs, (s_lazy, s_full)
    assert s_lazy.maps_encoded < 0.6 * s_full.maps_encoded, (s_lazy, s_full)


def test_encoder_cost_equals_texture_distance(models):
    """Cues of the batched, shared-input path against `texture_distance` pair by pair; sharing and
    identical inputs really happen here (maps compared with themselves, tracks that see every texel)."""
    frames = [f for f, _ in sequence(3, 1, seed=2)]
    uv = [p.uv for p in frames[0].people]
    covering = []
    for shift in (0.05, -0.07):
        m = uv[2].copy()
        m[:3] += shift
        m[3] = 1.0  # sees every texel: each pair uses the detection's own masked map
        covering.append(m)
    track_uv = [uv[0], uv[1], *covering, None]
    det_uv = [uv[0], uv[1], uv[2]]
    rows, cols = np.meshgrid(np.arange(len(track_uv)), np.arange(len(det_uv)), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    cue = models.texture(Tracker(models).config)
    got = cue(track_uv, det_uv, rows, cols)
    unseen = np.zeros_like(uv[0])
    unseen[3] = -1
    t_maps = np.stack([unseen if track_uv[i] is None else track_uv[i] for i in rows])
    want = texture_distance(models.appearance_encoder, t_maps, np.stack([det_uv[j] for j in cols]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    zero = ((rows == cols) & (rows < 2)) | (rows == 4)
    assert np.all(got[zero] == 0) and np.all(got[~zero] > 0)
    assert cue.stats.identical == 2  # (0, 0) and (1, 1)
    # 10 pairs encoded; the two covering tracks share the three detections' own inputs.
    assert cue.stats.maps_encoded == 2 * 10 - 3


def _run_decisive(rest: np.ndarray, r: np.ndarray, b0: float = 4.0536):
    need = ~(rest > TH)
    computed = np.zeros_like(need)
    r_now = np.zeros_like(r)

    def fill(rr, cc):
        r_now[rr, cc] = r[rr, cc]
        computed[rr, cc] = True

    def combine():
        return np.maximum(np.nan_to_num((1 + r_now * b0) * rest), 0.0)

    _fill_decisive(need, computed, fill, combine, TH)
    return combine(), int((computed & need).sum()), int(need.sum())


def test_decisive_assignment_equals_full_on_random_matrices():
    """Random gated matrices with many clipped (tied) entries, lost tracks and new detections."""
    rng = np.random.default_rng(0)
    saved = needed = 0
    fallbacks = 0
    for trial in range(300):
        n_t, n_d = rng.integers(1, 9, size=2)
        rest = rng.uniform(1, 60, (n_t, n_d))
        rest[rng.random((n_t, n_d)) < rng.uniform(0.2, 0.9)] = 150.0  # gated out
        if trial % 5 == 0:
            rest[rng.integers(n_t)] = 150.0  # a lost track
            rest[:, rng.integers(n_d)] = 150.0  # a new detection
        r = rng.exponential(rng.choice([0.01, 1.0, 20.0]), (n_t, n_d))
        full = np.maximum(np.nan_to_num((1 + r * 4.0536) * rest), 0.0)
        lazy, done, need = _run_decisive(rest, r)
        a, b = assign(full, TH), assign(lazy, TH)
        assert (a.matches, a.unmatched_rows, a.unmatched_cols) == (b.matches, b.unmatched_rows, b.unmatched_cols), trial
        saved += need - done
        needed += need
        fallbacks += done == need and need > 0
    assert saved > 0.15 * needed, (saved, needed)
    assert fallbacks > 0  # ties fell back to the full computation somewhere
