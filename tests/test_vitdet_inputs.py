"""ViTDet predictor on odd inputs, checkpoint loading errors, and the tiny factory."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import InputError, WeightsError
from pipeline.models.checkpoint import load_strict
from pipeline.models.vitdet.config import VitDetConfig, vitdet_tiny
from pipeline.models.vitdet.convert import read_model_zoo, to_state_dict
from pipeline.models.vitdet.files import CHECKPOINT_PATH, FILES
from pipeline.models.vitdet.model import VitDetModel
from pipeline.models.vitdet.predictor import Detections, VitDetPredictor, resized_hw
from pipeline.tiny.vitdet import calibration_figure, write_tiny_vitdet
from pipeline.weights import CacheRoots, catalog


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> CacheRoots:
    roots = CacheRoots.under(tmp_path_factory.mktemp("caches"))
    write_tiny_vitdet(roots, seed=0)
    return roots


@pytest.fixture(scope="module")
def predictor(roots: CacheRoots) -> VitDetPredictor:
    return VitDetPredictor.from_cache(roots, device="cpu", download=False)


def test_tiny_checkpoint_is_model_zoo_format(roots: CacheRoots) -> None:
    path = roots.detectron2 / CHECKPOINT_PATH
    with open(path, "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    assert set(raw) == {"model", "__author__"} and raw["__author__"] == "Detectron2 Model Zoo"
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in raw["model"].values())
    assert VitDetConfig.from_state_dict(raw["model"]) == vitdet_tiny()
    assert [f.key for f in catalog(["vitdet"])] == [f.key for f in FILES]


def test_tiny_finds_people_in_figures_not_in_blank_frames(predictor: VitDetPredictor) -> None:
    people = predictor(calibration_figure(), masks=True)[0]
    assert len(people) > 0
    assert np.all(people.classes == 0) and np.all(people.scores > 0.5)
    assert people.masks is not None and people.masks.any()
    for blank in (np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 255, np.uint8)):
        empty = predictor(blank, masks=True)[0]
        assert len(empty) == 0
        assert empty.boxes.shape == (0, 4) and empty.masks is not None and empty.masks.shape == (0, 480, 640)


@pytest.mark.parametrize(
    "shape",
    [(8, 8, 3), (30, 4000, 3), (4000, 3000, 3), (200, 300), (200, 300, 1), (200, 300, 4)],
    ids=["tiny", "very-wide", "4000px", "gray", "gray-1ch", "bgra"],
)
def test_odd_image_sizes(predictor: VitDetPredictor, shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    (out,) = predictor(image, masks=True)
    assert isinstance(out, Detections)
    h, w = shape[:2]
    assert out.masks is not None and out.masks.shape == (len(out), h, w)
    if len(out):
        assert out.boxes.min() >= 0 and out.boxes[:, 2].max() <= w and out.boxes[:, 3].max() <= h


def test_batch_equals_single(predictor: VitDetPredictor) -> None:
    frames = [calibration_figure(), calibration_figure(360, 640)[:, ::-1].copy()]
    batch = predictor(frames)
    stacked = predictor(np.stack([frames[0], frames[0]]))
    for frame, got in zip(frames, batch):
        (single,) = predictor(frame)
        assert len(single) == len(got)
        np.testing.assert_allclose(single.boxes, got.boxes, atol=1e-2)
        np.testing.assert_allclose(single.scores, got.scores, atol=1e-4)
    assert len(stacked) == 2 and len(stacked[0]) == len(batch[0])
    assert predictor([]) == []


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (np.zeros((10, 10, 3), np.float32), "image_dtype"),
        (np.zeros((0, 10, 3), np.uint8), "image_empty"),
        (np.zeros((10, 10, 2), np.uint8), "image_shape"),
        (np.zeros((1, 5000, 3), np.uint8), "image_too_elongated"),
        ("not an image", "image_invalid"),
    ],
)
def test_bad_images_raise_input_error(predictor: VitDetPredictor, image: object, code: str) -> None:
    with pytest.raises(InputError) as info:
        predictor([image])  # type: ignore[list-item]
    assert info.value.code == code


def test_resize_rule() -> None:
    assert resized_hw(6016, 4016, 1024) == (1024, 684)
    assert resized_hw(550, 1334, 1024) == (422, 1024)
    assert resized_hw(10, 10, 1024) == (1024, 1024)


def test_half_precision_on_cpu_falls_back(roots: CacheRoots, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        p = VitDetPredictor.from_cache(roots, device="cpu", dtype="float16", download=False)
    assert p.dtype == torch.float32 and "float32" in caplog.text


def test_offline_missing_checkpoint_is_clear(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        VitDetPredictor.from_cache(CacheRoots.under(tmp_path), download=False)
    assert info.value.code == "weights_missing"
    assert CHECKPOINT_PATH in info.value.message and "dl.fbaipublicfiles.com" in info.value.message


def test_strict_load_names_missing_and_unexpected(roots: CacheRoots) -> None:
    arrays = read_model_zoo(roots.detectron2 / CHECKPOINT_PATH)
    state = to_state_dict(arrays)
    state["backbone.extra"] = torch.zeros(1)
    del state["roi_heads.mask_head.deconv.bias"]
    model = VitDetModel(vitdet_tiny())
    with pytest.raises(WeightsError) as info:
        load_strict(model, state, source="tiny.pkl")
    assert "backbone.extra" in info.value.message and "mask_head.deconv.bias" in info.value.message


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Evil()}, "__author__": "x"}))
    with pytest.raises(WeightsError) as info:
        read_model_zoo(path)
    assert "refusing" in info.value.message


def test_truncated_checkpoint_is_reported(roots: CacheRoots, tmp_path: Path) -> None:
    broken = CacheRoots.under(tmp_path)
    target = broken.detectron2 / CHECKPOINT_PATH
    target.parent.mkdir(parents=True)
    target.write_bytes((roots.detectron2 / CHECKPOINT_PATH).read_bytes()[:1000])
    with pytest.raises(WeightsError) as info:
        VitDetPredictor.from_cache(broken, download=False)
    assert info.value.code == "weights_corrupt"
