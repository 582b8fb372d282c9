"""The tiny RegNetY detector: written by the factory at the official model-zoo path, read by the
real loader (`RegNetYPredictor.from_cache`), run with the predictor interface ViTDet's has;
strict loading refuses files that do not fit."""

from __future__ import annotations

import pickle
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
from pipeline.tiny.vitdet import draw_figures
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
