"""Edge cases of the tracker with tiny PHALP models: empty frames, one frame, crowds, bad values, state."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.errors import InputError, WeightsError
from pipeline.tiny.phalp import write_tiny_phalp
from pipeline.tracking import Tracker, collect_outputs
from pipeline.tracking.loading import tracker_models_from_cache
from pipeline.tracking.state import load_state, save_state
from pipeline.tracking.synthetic import sequence
from pipeline.weights import CacheRoots


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    r = CacheRoots.under(tmp_path_factory.mktemp("caches"))
    write_tiny_phalp(r)
    return r


@pytest.fixture(scope="module")
def models(roots):
    return tracker_models_from_cache(roots, device="cpu", download=False)


def _frames(n_people, n_frames, **kw):
    return [f for f, _ in sequence(n_people, n_frames, **kw)]


def test_missing_files_fail_fast_offline(tmp_path):
    with pytest.raises(WeightsError) as err:
        tracker_models_from_cache(CacheRoots.under(tmp_path), download=False)
    assert "hmar_v2_weights.pth" in err.value.message and "pose_predictor" in err.value.message


def test_empty_frames_and_single_frame(models):
    tracker = Tracker(models)
    out = tracker.run([(0, [], (720, 1280)), (1, [], (720, 1280))])
    assert [o.track_ids for o in out] == [[], []] and tracker.tracks == []
    frames = _frames(2, 1)
    out = Tracker(models).run(frames)
    assert len(out) == 1
    assert out[0].track_ids == [None, None]  # tentative until n_init hits
    assert sorted(i for i in out[0].assigned_ids) == [1, 2]


def test_empty_frame_deletes_tentative_and_ages_confirmed(models):
    tracker = Tracker(models)
    frames = _frames(1, 6)
    tracker.run(frames[:5])
    assert tracker.tracks[0].is_confirmed
    ft = tracker.step(5, [], (720, 1280))
    assert ft.tracks[0].time_since_update == 1 and ft.track_ids == []
    tracker2 = Tracker(models)
    tracker2.run(frames[:2])
    tracker2.step(2, [], (720, 1280))
    assert tracker2.tracks == []


def test_confirmation_backfills_earlier_frames(models):
    out = Tracker(models).run(_frames(1, 6))
    assert [o.track_ids for o in out[:4]] == [[None]] * 4
    assert out[4].track_ids == [1]
    assert [(b.frame_index, b.detection_index, b.track_id) for b in out[4].backfill] == [(3, 0, 1), (2, 0, 1), (1, 0, 1), (0, 0, 1)]
    merged = collect_outputs(out)
    assert [m["tracked_ids"] for m in merged] == [[1]] * 6


def test_hundreds_of_people(models):
    frames = _frames(300, 2, image_size=(2000, 8000), uv=False)
    assert len(frames[0].people) > 250
    out = Tracker(models).run(frames)
    ids = [i for i in out[1].assigned_ids if i is not None]
    assert len(ids) == len(set(ids)) == len(frames[1].people)


def test_non_finite_and_malformed_people_are_dropped(models):
    frame = _frames(3, 1)[0]
    bad_nan = dataclasses.replace(frame.people[0], betas=np.full(10, np.nan, np.float32))
    bad_inf = dataclasses.replace(frame.people[1], bbox=np.array([0.0, 0.0, np.inf, 300.0]))
    bad_uv = dataclasses.replace(frame.people[2], uv=np.full((4, 256, 256), np.inf, np.float32))
    bad_shape = dataclasses.replace(frame.people[2], body_pose=np.zeros((5, 3, 3)))
    low = dataclasses.replace(frame.people[2], score=0.5)
    small = dataclasses.replace(frame.people[2], bbox=np.array([10.0, 10.0, 40.0, 80.0]))
    people = [bad_nan, bad_inf, bad_uv, bad_shape, low, small, frame.people[2]]
    ft = Tracker(models).step(0, people, (720, 1280))
    assert sorted(ft.dropped) == [0, 1, 2, 3, 4, 5]
    assert "NaN" in ft.dropped[0] and "shape" in ft.dropped[3]
    assert ft.assigned_ids[:6] == [None] * 6 and ft.assigned_ids[6] == 1


def test_bad_calls_raise_input_errors(models):
    tracker = Tracker(models)
    tracker.step(3, [], (720, 1280))
    with pytest.raises(InputError):
        tracker.step(3, [], (720, 1280))
    with pytest.raises(InputError):
        tracker.step(4, [], (0, 1280))
    with pytest.raises(InputError):
        tracker.step(5, ["not a person"], (720, 1280))


def test_state_round_trip_continues_identically(models, tmp_path):
    frames = _frames(3, 12, missing={1: {7}})
    straight = Tracker(models).run(frames)
    first = Tracker(models)
    first.run(frames[:6])
    path = save_state(first.state_dict(), tmp_path / "state.npz")
    state = load_state(path)
    json.dumps({k: v for k, v in state.items() if k != "tracks"})  # plain data around the arrays
    resumed = Tracker(models)
    resumed.load_state_dict(state)
    rest = resumed.run(frames[6:])
    for a, b in zip(straight[6:], rest):
        assert a.track_ids == b.track_ids and a.assigned_ids == b.assigned_ids and a.backfill == b.backfill
    with pytest.raises(InputError):
        other = Tracker(models, dataclasses.replace(first.config, n_init=3))
        other.load_state_dict(state)
