"""The tiny RegNetY detector: written by the factory at the official model-zoo path, read by the
real loader (`RegNetYPredictor.from_cache`), run with the predictor interface ViTDet's has;
strict loading refuses files that do not fit. Like the tiny ViTDet it finds each drawn figure
once, well placed and trackable, ignores blank and noise frames, and a clip through the CLI
with ``--detector regnety`` gives the two figures' tracks."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import WeightsError
from pipeline.models.detection.predictor import Detections
from pipeline.models.regnety.config import regnety_4gf, regnety_tiny
from pipeline.models.regnety.files import CHECKPOINT_PATH, CHECKPOINT_URL
from pipeline.models.regnety.predictor import RegNetYPredictor
from pipeline.tiny import is_tiny_detector
from pipeline.tiny.regnety import write_tiny_regnety
from pipeline.tiny.vitdet import draw_figures, figure_box
from pipeline.weights import CacheRoots, catalog


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> CacheRoots:
    roots = CacheRoots.under(tmp_path_factory.mktemp("caches"))
    (path,) = write_tiny_regnety(roots, seed=0)
    assert path == roots.detectron2 / CHECKPOINT_PATH
    return roots


@pytest.fixture(scope="module")
def predictor(roots: CacheRoots) -> RegNetYPredictor:
    return RegNetYPredictor.from_cache(roots, device="cpu", download=False)


def test_file_is_a_model_zoo_pickle_at_the_official_path(roots: CacheRoots) -> None:
    assert CHECKPOINT_URL.endswith("/" + CHECKPOINT_PATH.removeprefix("detectron2/"))
    assert [f.key for f in catalog(["regnety"])] == ["regnety.checkpoint"]
    with open(roots.detectron2 / CHECKPOINT_PATH, "rb") as fh:
        payload = pickle.load(fh, encoding="latin1")
    assert set(payload) == {"model", "__author__"}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in payload["model"].values())
    assert payload["model"]["backbone.bottom_up.stem.bn.num_batches_tracked"].shape == ()


def test_runs_with_the_detector_interface(predictor: RegNetYPredictor) -> None:
    assert predictor.cfg == regnety_tiny() and is_tiny_detector(predictor)
    assert str(predictor.device) == "cpu" and predictor.score_thresh == 0.5 and predictor.stage_score_thresh == 0.5
    assert (predictor.input_size, predictor.max_size, predictor.post_nms_topk) == (800, 1333, 1000)
    frame = draw_figures([200, 440])
    batch, sizes = predictor.preprocess([frame])
    assert sizes == [(750, 1333)] and tuple(batch.shape) == (1, 3, 768, 1344)
    everything = predictor.detect_raw(frame, masks=True)[0]
    people = predictor([frame, frame], masks=True)
    assert len(people) == 2 and all(isinstance(d, Detections) for d in people)
    for d in people:
        assert np.all(d.classes == 0) and np.all(d.scores > 0.5)
        assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.classes.dtype == np.int64
        assert d.masks is not None and d.masks.shape == (len(d), *frame.shape[:2])
        assert np.all(d.boxes[:, 2] <= frame.shape[1]) and np.all(d.boxes[:, 3] <= frame.shape[0])
    person_rows = (everything.classes == 0) & (everything.scores > 0.5)
    np.testing.assert_array_equal(people[0].boxes, everything.boxes[person_rows])
    probs = predictor(frame, masks="probs")[0]
    assert probs.mask_probs is not None and probs.mask_probs.shape == (len(probs), 28, 28)
    full = probs.full_masks(*frame.shape[:2])
    assert full is not None and people[0].masks is not None
    np.testing.assert_array_equal(full, people[0].masks)


def test_options(roots: CacheRoots) -> None:
    quick = RegNetYPredictor.from_cache(
        roots, device="cpu", download=False, score_thresh=0.9, stage_score_thresh=0.7, input_size=400, post_nms_topk=50
    )
    assert (quick.score_thresh, quick.stage_score_thresh, quick.input_size, quick.max_size) == (0.9, 0.7, 400, 666)
    batch, sizes = quick.preprocess([draw_figures([200])])
    assert sizes == [(375, 666)] and tuple(batch.shape) == (1, 3, 384, 672)
    features = quick.model.backbone(batch)
    (proposals, _), = quick.model.proposal_generator(features, sizes)
    assert len(proposals) <= 50
    (raw, _), = quick.infer([draw_figures([200])], masks=False)
    assert bool((raw.scores > 0.7).all())
    with pytest.raises(ValueError, match="post_nms_topk"):
        RegNetYPredictor.from_cache(roots, device="cpu", download=False, post_nms_topk=0)


def test_strict_loading(roots: CacheRoots, tmp_path: Path) -> None:
    with open(roots.detectron2 / CHECKPOINT_PATH, "rb") as fh:
        payload = pickle.load(fh, encoding="latin1")
    model = payload["model"]

    def write(name: str, arrays: dict) -> Path:
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=4))
        return path

    # num_batches_tracked stored as int64 loads as well as the float the published files hold
    as_int = {k: (v.astype(np.int64) if k.endswith("num_batches_tracked") else v) for k, v in model.items()}
    loaded = RegNetYPredictor.from_checkpoint(write("int.pkl", as_int), device="cpu")
    assert loaded.cfg == regnety_tiny()
    missing = {k: v for k, v in model.items() if k != "roi_heads.mask_head.deconv.bias"}
    with pytest.raises(WeightsError) as info:
        RegNetYPredictor.from_checkpoint(write("missing.pkl", missing), device="cpu")
    assert info.value.code == "checkpoint_mismatch"
    with pytest.raises(WeightsError) as info:
        RegNetYPredictor.from_checkpoint(write("missing.pkl", missing), cfg=regnety_tiny(), device="cpu")
    assert info.value.code == "checkpoint_mismatch" and "mask_head.deconv.bias" in info.value.message
    extra = {**model, "backbone.extra": np.zeros(1, np.float32)}
    with pytest.raises(WeightsError) as info:
        RegNetYPredictor.from_checkpoint(write("extra.pkl", extra), cfg=regnety_tiny(), device="cpu")
    assert "backbone.extra" in info.value.message
    with pytest.raises(WeightsError) as info:
        RegNetYPredictor.from_checkpoint(write("tiny.pkl", model), cfg=regnety_4gf(), device="cpu")
    assert info.value.code == "checkpoint_mismatch" and "shape mismatch" in info.value.message
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(model, protocol=4))
    with pytest.raises(WeightsError) as info:
        RegNetYPredictor.from_checkpoint(tmp_path / "plain.pkl", device="cpu")
    assert "model-zoo" in info.value.message


# PHALP drops detections below these (its tracking filter)
MIN_WIDTH, MIN_HEIGHT, MIN_SCORE = 50.0, 100.0, 0.8


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def clip_positions(frames: int = 12) -> list[list[int]]:
    """The figures' x positions in `write_demo_media`'s clip, up to the frames where they overlap."""
    steps = [380 * i // (frames - 1) for i in range(frames)]
    return [[120 + s, 520 - s] for s in steps if abs(400 - 2 * s) > 60]


# (figure x positions, frame (height, width)): the serving tests' scene (stick_figures, 360x480),
# the demo photo, the demo clip's frames, two figures walking towards each other, three apart
SCENES = (
    [([120, 260, 384], (360, 480)), ([160, 340, 520], (360, 640))]
    + [(xs, (360, 640)) for xs in clip_positions()]
    + [([100 + 12 * i, 520 - 12 * i], (360, 640)) for i in range(0, 14, 3)]
    + [([90 + 7 * i, 320 - 5 * i, 540 - 9 * i], (360, 640)) for i in range(0, 12, 4)]
)


def test_each_drawn_figure_is_found_once_well_placed_and_trackable(predictor: RegNetYPredictor) -> None:
    assert len(SCENES) >= 10
    for xs, size in SCENES:
        frame = draw_figures(xs, size)
        (d,) = predictor(frame, masks=True)
        truth = np.stack([figure_box(x) for x in xs])
        assert len(d) == len(xs), f"{xs} in {size}: expected one person per figure, got {d.boxes} scores {d.scores}"
        iou = box_iou(d.boxes, truth)
        best = iou.argmax(axis=0)
        assert sorted(best.tolist()) == list(range(len(xs))), f"{xs}: one box claims two figures: {d.boxes}"
        assert np.all(iou.max(axis=0) >= 0.5), f"{xs}: IoU with the figures {iou.max(axis=0)}"
        w = d.boxes[:, 2] - d.boxes[:, 0]
        h = d.boxes[:, 3] - d.boxes[:, 1]
        assert np.all(d.scores > MIN_SCORE) and np.all(w >= MIN_WIDTH) and np.all(h >= MIN_HEIGHT), (d.boxes, d.scores)
        assert d.masks is not None
        for box, mask in zip(d.boxes, d.masks):
            x0, y0, x1, y1 = box.astype(int)
            figure_pixels = frame[y0:y1, x0:x1].mean(axis=2) < 150
            covered = mask[y0:y1, x0:x1][figure_pixels].mean()
            assert covered > 0.5, f"mask covers {covered:.2f} of the figure's pixels in its box"


def test_boxes_follow_a_moving_figure(predictor: RegNetYPredictor) -> None:
    previous: np.ndarray | None = None
    positions = [[100 + 12 * i, 520 - 12 * i] for i in range(0, 14, 3)]
    for prev_xs, xs in zip([None, *positions], positions):
        (d,) = predictor(draw_figures(xs))
        matched = d.boxes[box_iou(d.boxes, np.stack([figure_box(x) for x in xs])).argmax(axis=0)]
        if previous is not None and prev_xs is not None:
            step = np.asarray(xs) - np.asarray(prev_xs)
            centre_move = (matched[:, 0] + matched[:, 2] - previous[:, 0] - previous[:, 2]) / 2
            assert np.all(np.abs(centre_move - step) <= 15), (centre_move, step)
        previous = matched


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((360, 640, 3), np.uint8),
        np.full((360, 640, 3), 190, np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8),
    ],
    ids=["black", "grey", "white", "noise", "noise-720p"],
)
def test_blank_and_noise_frames_give_nothing(predictor: RegNetYPredictor, frame: np.ndarray) -> None:
    everything = predictor.detect_raw(frame)[0]
    assert len(everything) == 0, (everything.boxes, everything.scores, everything.classes)


def test_clip_through_the_cli_gives_the_two_figures_tracks(tmp_path: Path) -> None:
    """``python -m pipeline video clip.mp4 --profile tiny --detector regnety`` as documented."""
    from pipeline.tiny.media import write_demo_media

    clip = write_demo_media(tmp_path / "media")["clip"]
    out = tmp_path / "result.json"
    env = {**os.environ, "POSE_TINY_DIR": str(tmp_path / "tiny"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipeline", "video", str(clip), "--profile", "tiny", "--detector", "regnety",
           "--offline", "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["models"]["detector"] == "regnety_4gf_mask_rcnn"
    assert len(document["tracks"]) == 2, document["tracks"]
    people = [len(frame["people"]) for frame in document["frames"]]
    assert len(people) == 12 and sum(n == 2 for n in people) >= 8, people
