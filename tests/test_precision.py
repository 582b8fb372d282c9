"""bfloat16 / float16 against float32 on the golden inputs, with stated tolerances.

The half paths are the ones the service runs on a GPU: the predictors' forward under
``torch.autocast`` of the compute dtype. On a CPU the predictors fall back to float32 by design
(`pipeline.runtime.resolve_dtype`), so the tests set the predictor's compute dtype directly and
run CPU autocast, whose half kernels all exist. Tolerances:

* ViTDet: the same person boxes, each with IoU >= 0.99 to its float32 box;
* HMR2: vertices within 5 mm of float32; the SMPL layer float32 and equal to the float32 path;
* PHALP: predicted poses close to float32; identical tracking decisions over the golden scenario.

float16 meets them; bfloat16 does not for ViTDet and HMR2 (strict xfails with the measured
deviation), so the service's bfloat16 setting is not proven on these models.

CPUs without bf16/fp16 instructions (AVX2 only) run half matmuls ~200x and convolutions ~85x
slower than float32; to stay near a minute the detector runs at the tiny profile's test-time
size (with the configured 1000 proposals, held at the float32 run's: see `_person_detections`),
and the whole tracking scenario runs only on CUDA or when ``POSE_PRECISION_SCENARIO=1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile

import cv2
import numpy as np
import pytest
import torch
from phalp_golden import golden_config, golden_scenario

HALF = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]
# bfloat16 (8 mantissa bits) misses the tolerances on the golden models; measured on the golden
# inputs, kept as strict xfails so that a change that meets them is noticed.
_BF16_VITDET = "bfloat16 loses 2 of 52 person boxes of golden image 1 and moves others below IoU 0.99 with float32"
_BF16_HMR2 = "bfloat16 in the ViT backbone moves vertices by 15 mm (tolerance 5 mm), even with head and SMPL in float32"
VITDET_HALF = [pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.xfail(reason=_BF16_VITDET, strict=True)), HALF[1]]
HMR2_HALF = [pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.xfail(reason=_BF16_HMR2, strict=True)), HALF[1]]
IOU_MIN = 0.99
VERTEX_MM_MAX = 5.0
POSE_ATOL = 0.05  # PHALP pose vectors (rotation entries, betas, camera), absolute


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _member_path(manifest: dict, suffix: str) -> str:
    members = manifest[next(k for k in manifest if k.endswith("members"))]
    return next(m["path"] for m in members if m["path"].endswith(suffix))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


# -- ViTDet ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vitdet(golden):
    from pipeline.models.vitdet.predictor import VitDetPredictor
    from pipeline.tiny.vitdet import tiny_detector_settings

    folder = golden("vitdet")
    manifest = json.loads((folder / "manifest.json").read_text())
    (pkl,) = [name for name in manifest["files"] if name.endswith(".pkl")]
    summary = json.loads((folder / "expected_summary.json").read_text())
    images = [cv2.imread(str(folder / im["image_file"]), cv2.IMREAD_COLOR) for im in summary["images"]]
    assert images and all(im is not None for im in images), "no readable images in expected_summary.json"
    # The tiny profile's test-time size keeps half precision near a minute on AVX2-only CPUs;
    # the proposal count stays the configured one, so every box the cascade can give is compared.
    predictor = VitDetPredictor.from_checkpoint(folder / pkl, device=str(_device()), input_size=tiny_detector_settings().input_size)
    reference = [_person_detections(predictor, image, torch.float32) for image in images]
    return predictor, images, reference


def _person_detections(predictor, image: np.ndarray, dtype: torch.dtype, proposals=None):
    """Person boxes and scores of one image (original frame) and the RPN proposals used.

    With ``proposals`` given the RPN's choice is skipped: its top-k cut ranks proposals whose
    objectness logits can lie closer than half precision's noise (in the golden image 1 at the
    512 px size, proposal 98 of the first 100 is 8e-4 above the 100th), so which proposals enter
    the cascade is a coin toss that says nothing about the boxes' precision. Backbone and
    cascade still run in ``dtype``: ROIAlign reads the half-precision features.
    """
    from pipeline.models.vitdet.predictor import postprocess
    from pipeline.runtime import autocast

    with torch.inference_mode():
        batch, sizes = predictor.preprocess([image])
        # The predictor's own autocast, with the GPU's compute dtype on any device.
        with autocast(predictor.device, dtype):
            features = predictor.model.backbone(batch)
            if proposals is None:
                proposals = predictor.model.proposal_generator(features, sizes)[0][0]
            raw = predictor.model.roi_heads(features, [proposals], sizes, score_thresh=predictor.stage_score_thresh, masks=False)[0]
    det = postprocess(raw, image.shape[:2], sizes[0], masks=False)
    person = det.classes == 0
    return det.boxes[person], det.scores[person], proposals


@pytest.mark.parametrize("dtype", VITDET_HALF)
def test_vitdet_half_boxes(vitdet, dtype):
    """Every person box of the float32 run is found in half precision (IoU >= IOU_MIN) and the
    other way round, except a box whose score lies within half precision's own score noise of
    the cascade's threshold: keeping it is a discrete decision the noise may flip (on AVX2 CPUs
    one float16 box of golden image 1 scores 0.2505 against the 0.25 cut and float32 drops it)."""
    predictor, images, reference = vitdet
    thresholds = (predictor.stage_score_thresh, predictor.score_thresh)
    worst, seen, score_diff = 1.0, 0, 0.0
    unmatched: list[tuple[int, str, float]] = []
    for i, (image, (ref_boxes, ref_scores, proposals)) in enumerate(zip(images, reference)):
        boxes, scores, _ = _person_detections(predictor, image, dtype, proposals)
        iou = box_iou(ref_boxes, boxes) if len(ref_boxes) and len(boxes) else np.zeros((len(ref_boxes), len(boxes)))
        ref_found = iou.max(1) >= IOU_MIN if len(boxes) else np.zeros(len(ref_boxes), bool)
        half_found = iou.max(0) >= IOU_MIN if len(ref_boxes) else np.zeros(len(boxes), bool)
        unmatched += [(i, "float32", float(s)) for s in ref_scores[~ref_found]]
        unmatched += [(i, str(dtype), float(s)) for s in scores[~half_found]]
        if not ref_found.any():
            continue
        best = iou.argmax(1)[ref_found]
        assert len(set(best.tolist())) == len(best), f"image {i}: two float32 boxes matched one {dtype} box"
        worst = min(worst, float(iou[np.flatnonzero(ref_found), best].min()))
        score_diff = max(score_diff, float(np.abs(scores[best] - ref_scores[ref_found]).max()))
        seen += int(ref_found.sum())
    assert seen > 0, "the golden images gave no person boxes"
    print(f"ViTDet {dtype}: min IoU {worst:.4f} over {seen} boxes, max score change {score_diff:.4f}, unmatched {unmatched}")
    assert worst >= IOU_MIN, f"{dtype}: min box IoU {worst:.4f} < {IOU_MIN}"
    far = [(i, run, s) for i, run, s in unmatched if min(abs(s - t) for t in thresholds) > score_diff]
    assert far == [], (
        f"{dtype}: boxes found in one run only, scored further from the thresholds {thresholds} than the "
        f"largest score change of a matched box ({score_diff:.4f}): {far}"
    )
    assert len(unmatched) <= max(1, seen // 20), f"{dtype}: {len(unmatched)} boxes of {seen} found in one run only"


# -- HMR2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hmr2(golden, tmp_path_factory):
    from pipeline.models.hmr2.predictor import HMR2Predictor

    folder = golden("hmr2")
    manifest = json.loads((folder / "manifest.json").read_text())
    archive = next(f["path"] for f in manifest["files"] if f["path"].endswith(".tar.gz"))
    root = tmp_path_factory.mktemp("hmr2_precision")
    with tarfile.open(folder / archive) as tar:
        tar.extractall(root, filter="data")
    ckpt = root / _member_path(manifest, ".ckpt")
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == next(
        m["sha256"] for m in manifest[next(k for k in manifest if k.endswith("members"))] if m["path"].endswith(".ckpt")
    )
    predictor = HMR2Predictor.from_files(
        ckpt,
        smpl=root / _member_path(manifest, "smpl/SMPL_NEUTRAL.pkl"),
        joint_regressor=root / _member_path(manifest, "SMPL_to_J19.pkl"),
        device=str(_device()),
    )
    inputs = json.loads((folder / "inputs.json").read_text())
    crops = [np.load(folder / img["fixture"])["img"] for img in inputs["images"]]
    assert crops, "no images in inputs.json"
    return predictor, np.concatenate(crops)


@pytest.mark.parametrize("dtype", HMR2_HALF)
def test_hmr2_half_vertices(hmr2, dtype):
    predictor, crops = hmr2
    reference = predictor.forward_crops(crops)["pred_vertices"]
    predictor.dtype = dtype
    try:
        half = predictor.forward_crops(crops)["pred_vertices"]
    finally:
        predictor.dtype = torch.float32
    assert half.dtype == np.float32 and half.shape == reference.shape and len(reference) > 0
    worst_mm = float(np.abs(half.astype(np.float64) - reference).max() * 1000)
    print(f"HMR2 {dtype}: max |vertex diff| {worst_mm:.3f} mm over {len(crops)} crops")
    assert worst_mm <= VERTEX_MM_MAX, f"{dtype}: vertices move by {worst_mm:.2f} mm > {VERTEX_MM_MAX} mm"


@pytest.mark.parametrize("dtype", HALF)
def test_smpl_stays_float32_under_autocast(hmr2, dtype):
    predictor, crops = hmr2
    model = predictor.model
    with torch.inference_mode():
        head = model.smpl_head(model.backbone(model.backbone_input(torch.from_numpy(crops).to(predictor.device))))
        args = [head[k].float() for k in ("global_orient", "body_pose", "betas")]
        expected = model.smpl(*args)
        with torch.autocast(device_type=predictor.device.type, dtype=dtype):
            got = model.smpl(*(a.to(dtype) for a in args[:2]), args[2].to(dtype))
            got_f32_inputs = model.smpl(*args)
    for out in (got, got_f32_inputs):
        for name in ("vertices", "joints", "joints_smplx45"):
            value = getattr(out, name)
            assert value.dtype == torch.float32, f"{name} is {value.dtype} under {dtype} autocast"
    for name in ("vertices", "joints", "joints_smplx45"):
        assert torch.equal(getattr(got_f32_inputs, name), getattr(expected, name)), name
    # Inputs rounded to the half dtype stay the only difference (rotations moved by <= 1 ulp).
    assert torch.allclose(got.vertices, expected.vertices, atol=5e-3)


# -- PHALP -------------------------------------------------------------------------------------
def _autocast(dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device().type, dtype=dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_phalp_pose_predictor_half(golden, phalp_golden_models, dtype):
    folder = golden("phalp")
    predictor = phalp_golden_models[0]
    cases = [c for c in json.loads((folder / "pose_predictor_cases.json").read_text())["cases"] if c["error"] is None]
    assert cases, "no case without an error in pose_predictor_cases.json"
    with np.load(folder / "pose_predictor_cases.npz") as data:
        case = cases[0]  # one case: a half predict_next on an AVX2 CPU takes seconds
        p = case["prefix"]
        args = [torch.from_numpy(np.asarray(data[p + k])) for k in ("en_pose", "en_time", "time_to_predict")]
    reference = predictor.predict_next(*args)
    with _autocast(dtype):
        half = predictor.predict_next(*args)
    assert half.dtype == torch.float32
    worst = float((half - reference).abs().max())
    print(f"PHALP pose predictor {dtype}: max |diff| {worst:.4f} ({case['name']})")
    assert worst <= POSE_ATOL, f"{dtype}: predicted pose differs by {worst:.4f} > {POSE_ATOL}"


def _decisions(models, config, frames, dtype):
    from pipeline.tracking import Tracker

    tracker = Tracker(models, config, texture_pairs="decisive")  # the same decisions as "all", fewer encoder runs
    out = []
    with _autocast(dtype):
        for t, people, size in frames:
            ft = tracker.step(t, people, size)
            out.append({
                "matches": [list(map(int, m)) for m in ft.matches], "new": list(ft.new_track_ids),
                "deleted": list(ft.deleted_track_ids), "unmatched_tracks": list(ft.unmatched_track_ids),
                "unmatched_dets": list(ft.unmatched_detections),
                "tracks": [(x.track_id, x.state.value, x.hits) for x in tracker.tracks],
            })  # fmt: skip
    return out


@pytest.mark.parametrize("dtype", HALF)
def test_phalp_tracking_decisions_half(golden, phalp_golden_models, dtype):
    if _device().type == "cpu" and os.environ.get("POSE_PRECISION_SCENARIO") != "1":
        pytest.skip(
            "the whole golden scenario in half precision takes 8-10 min per dtype on a CPU without bf16/fp16 "
            "instructions (half convolutions ~85x, matmuls ~200x slower than float32); runs on CUDA or with "
            "POSE_PRECISION_SCENARIO=1"
        )
    from pipeline.tracking import TrackerModels

    folder = golden("phalp")
    frames = [f[:3] for f in golden_scenario(folder)]
    config = golden_config(folder)
    models = TrackerModels(*phalp_golden_models)
    reference = _decisions(models, config, frames, None)
    assert any(f["matches"] for f in reference), "the scenario never matched a track"
    half = _decisions(models, config, frames, dtype)
    for ref, ours, (t, _, _) in zip(reference, half, frames):
        assert ours == ref, f"frame {t}: {dtype} decisions differ from float32"
