"""The tiny ViTDet finds the drawn figures of the video tests well enough for tracking, ignores
blank and noise frames, and honours the test-time speed settings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.vitdet.predictor import Detections, VitDetPredictor
from pipeline.tiny.vitdet import draw_figures as figure_frame
from pipeline.tiny.vitdet import figure_box, tiny_detector_settings, write_tiny_vitdet
from pipeline.weights import CacheRoots

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


# two figures walking towards each other (stopping before they overlap), and three apart
SEQUENCES = {
    "crossing": [[100 + 12 * i, 520 - 12 * i] for i in range(0, 14, 3)],
    "three": [[90 + 7 * i, 320 - 5 * i, 540 - 9 * i] for i in range(0, 12, 4)],
}
SETTINGS = {"default": {}, "fast": vars(tiny_detector_settings())}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> CacheRoots:
    roots = CacheRoots.under(tmp_path_factory.mktemp("caches"))
    write_tiny_vitdet(roots, seed=0)
    return roots


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def predictor(request: pytest.FixtureRequest, roots: CacheRoots) -> VitDetPredictor:
    return VitDetPredictor.from_cache(roots, device="cpu", download=False, **SETTINGS[request.param])


def trackable(d: Detections) -> Detections:
    w = d.boxes[:, 2] - d.boxes[:, 0]
    h = d.boxes[:, 3] - d.boxes[:, 1]
    return d.select((d.scores > MIN_SCORE) & (w >= MIN_WIDTH) & (h >= MIN_HEIGHT) & (d.classes == 0))


@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_figures_are_found_trackable_and_stable(predictor: VitDetPredictor, sequence: str) -> None:
    previous: np.ndarray | None = None
    previous_xs: list[int] | None = None
    for xs in SEQUENCES[sequence]:
        (d,) = predictor(figure_frame(xs), masks=True)
        people = trackable(d)
        truth = np.stack([figure_box(x) for x in xs])
        iou = box_iou(people.boxes, truth)
        assert len(people) >= len(xs), f"{xs}: expected a trackable box per figure, got {people.boxes}"
        best = iou.argmax(axis=0)
        assert np.all(iou.max(axis=0) >= 0.3), f"{xs}: IoU with the figures {iou.max(axis=0)}"
        assert len(set(best.tolist())) == len(xs), f"{xs}: one box claims two figures"
        assert len(people) <= len(xs) + 1, f"{xs}: spurious trackable boxes {people.boxes}"
        assert len(d) <= len(xs) + 2, f"{xs}: spurious boxes {d.boxes} scores {d.scores}"
        matched = people.boxes[best]
        if previous is not None and previous_xs is not None:
            # each figure's box follows the figure: it moves by the figure's step, give or take
            # one feature cell, and keeps overlapping its previous box
            step = np.asarray(xs) - np.asarray(previous_xs)
            centre_move = (matched[:, 0] + matched[:, 2] - previous[:, 0] - previous[:, 2]) / 2
            assert np.all(np.abs(centre_move - step) <= 20), (centre_move, step)
        previous, previous_xs = matched, xs
        assert people.masks is not None
        for box, mask in zip(matched, people.masks[best]):
            x0, y0, x1, y1 = box.astype(int)
            figure_pixels = figure_frame(xs)[y0:y1, x0:x1].mean(axis=2) < 150
            covered = mask[y0:y1, x0:x1][figure_pixels].mean()
            assert covered > 0.5, f"mask covers {covered:.2f} of the figure's pixels in its box"


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
def test_blank_and_noise_frames_give_nothing(predictor: VitDetPredictor, frame: np.ndarray) -> None:
    (d,) = predictor(frame)
    assert len(trackable(d)) == 0 and len(d) <= 1, d.boxes


def test_speed_settings_change_the_network_input(roots: CacheRoots) -> None:
    fast = tiny_detector_settings()
    default = VitDetPredictor.from_cache(roots, device="cpu", download=False)
    quick = VitDetPredictor.from_cache(
        roots, device="cpu", download=False, input_size=fast.input_size, post_nms_topk=fast.post_nms_topk
    )
    frame = figure_frame([200, 440])
    batch, sizes = default.preprocess([frame])
    assert batch.shape == (1, 3, 1024, 1024) and sizes == [(576, 1024)]
    batch, sizes = quick.preprocess([frame])
    assert batch.shape == (1, 3, fast.input_size, fast.input_size) and sizes == [(288, 512)]
    assert default.model.proposal_generator.post_nms_topk == 1000
    assert quick.model.proposal_generator.post_nms_topk == fast.post_nms_topk
    features = quick.model.backbone(batch)
    proposals = quick.model.proposal_generator(features, sizes)
    assert len(proposals[0][0]) <= fast.post_nms_topk
    with pytest.raises(ValueError, match="multiple of 16"):
        VitDetPredictor.from_cache(roots, device="cpu", download=False, input_size=500)
    with pytest.raises(ValueError, match="post_nms_topk"):
        VitDetPredictor.from_cache(roots, device="cpu", download=False, post_nms_topk=0)
