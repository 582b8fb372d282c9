"""HMR2.0 against the reference's golden outputs (4D-Humans on random tiny weights).

Every case, size and file name comes from the fixture files (manifest.json, inputs.json, the
npz keys); tolerances are those the fixture README gives (atol, rtol per array family).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.imageio import load_image
from pipeline.models.hmr2.config import HMR2Config, hmr2_b
from pipeline.models.hmr2.convert import TRAINING_ONLY_KEYS, TRAINING_ONLY_PREFIXES, convert_state_dict
from pipeline.models.hmr2.model import HMR2
from pipeline.models.hmr2.predictor import HMR2Predictor
from pipeline.models.hmr2.preprocess import cam_crop_to_full, full_image_focal, make_crops
from pipeline.models.smpl import SMPLBodyModel

# (atol, rtol) from the fixture README, section 9.
TOL_IMG = (1e-5, 0.0)
TOL_GEOM = (1e-4, 1e-6)
TOL_NET = (1e-4, 1e-4)
TOL_SMPL = (1e-5, 1e-5)


def assert_close(actual, expected, tol, what: str) -> None:
    atol, rtol = tol
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    err = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert err.size == 0 or err.max() <= 0, (
        f"{what}: max |diff| {np.abs(actual - expected).max():.3g} over atol {atol} + rtol {rtol} at {worst}"
    )


@pytest.fixture(scope="module")
def gold(golden) -> Path:
    return golden("hmr2")


@pytest.fixture(scope="module")
def manifest(gold) -> dict:
    return json.loads((gold / "manifest.json").read_text())


@pytest.fixture(scope="module")
def inputs(gold) -> dict:
    return json.loads((gold / "inputs.json").read_text())


@pytest.fixture(scope="module")
def cache_root(gold, manifest, tmp_path_factory) -> Path:
    """The synthetic 4D-Humans cache of the fixture, extracted and checked against the manifest."""
    archive = next(f["path"] for f in manifest["files"] if f["path"].endswith(".tar.gz"))
    root = tmp_path_factory.mktemp("hmr2_cache")
    with tarfile.open(gold / archive) as tar:
        tar.extractall(root, filter="data")
    members_key = next(k for k in manifest if k.endswith("members"))
    for member in manifest[members_key]:
        digest = hashlib.sha256((root / member["path"]).read_bytes()).hexdigest()
        assert digest == member["sha256"], f"extracted {member['path']} differs from the manifest"
    return root


def _member(manifest: dict, suffix: str) -> str:
    members_key = next(k for k in manifest if k.endswith("members"))
    return next(m["path"] for m in manifest[members_key] if m["path"].endswith(suffix))


@pytest.fixture(scope="module")
def predictor(cache_root, manifest) -> HMR2Predictor:
    return HMR2Predictor.from_files(
        cache_root / _member(manifest, ".ckpt"),
        smpl=cache_root / _member(manifest, "smpl/SMPL_NEUTRAL.pkl"),
        joint_regressor=cache_root / _member(manifest, "SMPL_to_J19.pkl"),
        device="cpu",
    )


def _cases(inputs: dict):
    cases = [(img, img["fixture"]) for img in inputs["images"]]
    assert cases, "no images in inputs.json"
    return cases


def test_decoded_images_match_reference(gold, inputs):
    for img, _ in _cases(inputs):
        bgr = load_image(gold / img["file"])
        assert list(bgr.shape) == list(img["decoded_shape_hwc"]), img["file"]
        assert hashlib.sha256(np.ascontiguousarray(bgr).tobytes()).hexdigest() == img["decoded_bgr_sha256"], img["file"]


def test_preprocessing(gold, inputs, predictor):
    for img, fixture in _cases(inputs):
        ref = np.load(gold / fixture)
        crops = make_crops(load_image(gold / img["file"]), ref["boxes_xyxy"], predictor.cfg)
        assert_close(crops.img, ref["img"], TOL_IMG, f"{fixture}: img")
        assert_close(crops.box_center, ref["box_center"], TOL_GEOM, f"{fixture}: box_center")
        assert_close(crops.box_size, ref["box_size"], TOL_GEOM, f"{fixture}: box_size")
        assert_close(crops.img_size, ref["img_size"], TOL_GEOM, f"{fixture}: img_size")
        assert_close(crops.blur_sigma, ref["blur_sigma"], TOL_GEOM, f"{fixture}: blur_sigma")
        assert_close(crops.affine, ref["crop_affine"], TOL_GEOM, f"{fixture}: crop_affine")


def test_backbone_probe(gold, predictor):
    probe = np.load(gold / "backbone_probe.npz")
    vit = predictor.model.backbone
    with torch.no_grad():
        x = predictor.model.backbone_input(torch.from_numpy(probe["img"]))
        assert_close(x, probe["backbone_input"], TOL_NET, "backbone_input")
        tokens, _ = vit.patch_embed(x)
        assert_close(tokens, probe["patch_embed_tokens"], TOL_NET, "patch_embed_tokens")
        tokens, grid = vit.embed(x)
        assert_close(tokens, probe["tokens_after_pos_embed"], TOL_NET, "tokens_after_pos_embed")
        block_keys = sorted(k for k in probe.files if k.startswith("block") and k.endswith("_out"))
        assert block_keys, "no block*_out arrays in backbone_probe.npz"
        assert len(block_keys) == len(vit.blocks)
        for key, block in zip(block_keys, vit.blocks):
            tokens = block(tokens)
            assert_close(tokens, probe[key], TOL_NET, key)
        tokens = vit.last_norm(tokens)
        assert_close(tokens, probe["last_norm_out"], TOL_NET, "last_norm_out")
        features = vit(x)
        assert_close(features, probe["features"], TOL_NET, "features")


@pytest.mark.parametrize("smpl_file", ["smpl/SMPL_NEUTRAL.pkl", "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"])
def test_smpl_layer_from_pickle(gold, cache_root, manifest, smpl_file):
    ref = np.load(gold / "smpl_layer.npz")
    smpl = SMPLBodyModel.from_files(cache_root / _member(manifest, smpl_file), cache_root / _member(manifest, "SMPL_to_J19.pkl"))
    with torch.no_grad():
        out = smpl(*(torch.from_numpy(ref[k]) for k in ("global_orient", "body_pose", "betas")))
    assert_close(out.vertices, ref["vertices"], TOL_SMPL, "vertices")
    assert_close(out.joints, ref["joints"], TOL_SMPL, "joints")
    assert_close(out.joints_smplx45, ref["joints_smplx45"], TOL_SMPL, "joints_smplx45")


def test_smpl_pickle_equals_checkpoint_buffers(cache_root, manifest, predictor):
    """The chumpy-free reader gives exactly the numbers the checkpoint's smpl.* buffers hold."""
    for name in ("smpl/SMPL_NEUTRAL.pkl", "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"):
        smpl = SMPLBodyModel.from_files(cache_root / _member(manifest, name), cache_root / _member(manifest, "SMPL_to_J19.pkl"))
        for key, value in smpl.state_dict().items():
            assert torch.equal(value, predictor.model.smpl.state_dict()[key]), f"{name}: {key}"


def test_network_outputs_on_recorded_crops(gold, inputs, predictor):
    names = {
        "pred_cam": "pred_cam",
        "global_orient": "pred_smpl_params.global_orient",
        "body_pose": "pred_smpl_params.body_pose",
        "betas": "pred_smpl_params.betas",
        "pred_cam_t": "pred_cam_t",
        "focal_length": "focal_length",
        "pred_keypoints_3d": "pred_keypoints_3d",
        "pred_keypoints_2d": "pred_keypoints_2d",
        "pred_vertices": "pred_vertices",
        "backbone_features": "backbone_features",
        "token_out": "head_token_out",
    }
    head = predictor.model.smpl_head
    for _, fixture in _cases(inputs):
        ref = np.load(gold / fixture)
        with torch.no_grad():
            out = predictor.model(torch.from_numpy(ref["img"]), with_features=True)
            token = out["token_out"]
            assert_close(head.decpose(token), ref["head_decpose_out"], TOL_NET, f"{fixture}: decpose")
            assert_close(head.decshape(token), ref["head_decshape_out"], TOL_NET, f"{fixture}: decshape")
            assert_close(head.deccam(token), ref["head_deccam_out"], TOL_NET, f"{fixture}: deccam")
        for ours, theirs in names.items():
            assert_close(out[ours], ref[theirs], TOL_NET, f"{fixture}: {theirs}")
        focal = full_image_focal(torch.from_numpy(ref["img_size"]).float(), predictor.cfg)
        assert_close(focal, ref["scaled_focal_length"], TOL_NET, f"{fixture}: scaled_focal_length")
        full = cam_crop_to_full(
            torch.from_numpy(ref["pred_cam"]),
            torch.from_numpy(ref["box_center"]),
            torch.from_numpy(ref["box_size"]),
            torch.from_numpy(ref["img_size"]).float(),
            focal,
        )
        assert_close(full, ref["pred_cam_t_full"], TOL_NET, f"{fixture}: pred_cam_t_full")


def test_predictor_end_to_end_from_image_file(gold, inputs, predictor):
    for img, fixture in _cases(inputs):
        ref = np.load(gold / fixture)
        out = predictor.predict(load_image(gold / img["file"]), ref["boxes_xyxy"], vertices=True)
        pairs = {
            "pred_cam": "pred_cam",
            "global_orient": "pred_smpl_params.global_orient",
            "body_pose": "pred_smpl_params.body_pose",
            "betas": "pred_smpl_params.betas",
            "cam_t": "pred_cam_t",
            "keypoints_3d": "pred_keypoints_3d",
            "keypoints_2d_crop": "pred_keypoints_2d",
            "vertices": "pred_vertices",
            "cam_t_full": "pred_cam_t_full",
            "focal_length_full": "scaled_focal_length",
        }
        for ours, theirs in pairs.items():
            assert_close(getattr(out, ours), ref[theirs], TOL_NET, f"{fixture}: {theirs}")
        # Keypoints in image pixels: crop pixel 256 * v + 128 mapped back through the crop affine.
        crop_px = ref["pred_keypoints_2d"] * 256 + 128
        inv = np.stack([np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2] for a in ref["crop_affine"]])
        expected = np.einsum("nij,nkj->nki", inv[:, :, :2], crop_px) + inv[:, None, :, 2]
        assert_close(out.keypoints_2d, expected, (1e-2, 1e-5), f"{fixture}: keypoints_2d in pixels")


def test_batch_of_crops_from_many_images_equals_per_image(gold, inputs, predictor):
    items = [(load_image(gold / img["file"]), np.load(gold / fx)["boxes_xyxy"]) for img, fx in _cases(inputs)]
    together = predictor.predict_many(items)
    assert len(together) == len(items)
    for (image, boxes), joint in zip(items, together):
        alone = predictor.predict(image, boxes)
        assert_close(joint.betas, alone.betas, TOL_NET, "betas batched vs alone")
        assert_close(joint.cam_t_full, alone.cam_t_full, TOL_NET, "cam_t_full batched vs alone")


def _schema_entries(path: Path) -> list[dict]:
    schema = json.loads(path.read_text())
    entries = schema["keys"] if isinstance(schema, dict) else schema
    assert entries, f"no keys in {path.name}"
    return entries


def _assert_schema_matches(model: HMR2, entries: list[dict]) -> None:
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    theirs = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in entries}
    dropped = {k for k in theirs if k.startswith(TRAINING_ONLY_PREFIXES) or k in TRAINING_ONLY_KEYS}
    inference_keys = set(theirs) - dropped
    assert set(ours) == inference_keys, f"missing {sorted(inference_keys - set(ours))[:5]}, extra {sorted(set(ours) - inference_keys)[:5]}"
    for key in ours:
        assert ours[key] == theirs[key], f"{key}: ours {ours[key]}, reference {theirs[key]}"
    # What we drop is exactly what the reference marks as training-only (besides mesh faces).
    training_only = {e["key"] for e in entries if not e.get("needed_for_inference", True)}
    assert dropped <= training_only


def test_full_size_schema_equals_our_modules(gold):
    with torch.device("meta"):
        model = HMR2(hmr2_b())
    _assert_schema_matches(model, _schema_entries(gold / "hmr2_full_state_dict_schema.json"))


def test_tiny_schema_equals_model_built_from_config(gold):
    cfg = HMR2Config.from_yaml(gold / "model_config.yaml")
    with torch.device("meta"):
        model = HMR2(cfg)
    _assert_schema_matches(model, _schema_entries(gold / "tiny_state_dict_schema.json"))


def test_checkpoint_drops_only_listed_training_keys(cache_root, manifest):
    from pipeline.models.hmr2.convert import read_checkpoint_state_dict

    state = read_checkpoint_state_dict(cache_root / _member(manifest, ".ckpt"))
    kept = convert_state_dict(state)
    assert set(state) - set(kept) == {k for k in state if k.startswith(TRAINING_ONLY_PREFIXES) or k in TRAINING_ONLY_KEYS}
