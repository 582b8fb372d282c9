"""Pose predictor and appearance encoder against PHALP's golden fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.models.phalp.encoder import process_uv_image


@pytest.fixture(scope="module")
def phalp_dir(golden):
    return golden("phalp")


@pytest.fixture(scope="module")
def predictor(phalp_golden_models):
    return phalp_golden_models[0]


def _cases(phalp_dir):
    meta = json.loads((phalp_dir / "pose_predictor_cases.json").read_text())
    assert meta["cases"], "no cases in pose_predictor_cases.json"
    with np.load(phalp_dir / "pose_predictor_cases.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta["cases"], arrays


def test_pose_predictor_matches_reference(phalp_dir, predictor):
    cases, arrays = _cases(phalp_dir)
    checked = errors = 0
    for case in cases:
        p = case["prefix"]
        pose = torch.from_numpy(arrays[p + "en_pose"])
        times = torch.from_numpy(arrays[p + "en_time"])
        tsu = torch.from_numpy(np.asarray(arrays[p + "time_to_predict"]))
        if case["error"] is not None:
            # The reference raises here (history span > L-1 frames); we must not.
            out = predictor.predict_next(pose, times, tsu)
            assert out.shape == (pose.shape[0], pose.shape[-1])  # one pose vector per row, as the input's
            assert torch.isfinite(out).all()
            errors += 1
            continue
        full = predictor.decode_all(pose, times)
        np.testing.assert_array_equal(full["has_detection"].numpy(), arrays[p + "input_has_detection"] > 0, err_msg=p)
        np.testing.assert_allclose(
            full["canvas"].numpy(), arrays[p + "input_pose_shape_normalised"], rtol=1e-6, atol=1e-6, err_msg=p
        )
        np.testing.assert_allclose(
            full["tokens"].numpy(), arrays[p + "encoder_tokens"][:, 1:], rtol=1e-3, atol=1e-4, err_msg=p
        )
        np.testing.assert_allclose(full["decoded"].numpy(), arrays[p + "decoded_pose_camera"], atol=1e-5, err_msg=p)
        slots = predictor.target_slots(full["last_slot"], tsu)
        assert slots.tolist() == case["target_slot_per_row"], p
        out = predictor.predict_next(pose, times, tsu)
        np.testing.assert_allclose(out.numpy(), arrays[p + "output"], atol=1e-5, err_msg=p)
        checked += 1
    assert checked > 0, "no case without an error in pose_predictor_cases.json"
    assert checked + errors == len(cases)


def test_pose_predictor_per_row_readout_differs_only_in_row_slots(phalp_dir, predictor):
    cases, arrays = _cases(phalp_dir)
    checked = 0
    for case in cases:
        if case["error"] is not None or case["batch_size"] < 2:
            continue
        checked += 1
        p = case["prefix"]
        pose = torch.from_numpy(arrays[p + "en_pose"])
        times = torch.from_numpy(arrays[p + "en_time"])
        tsu = torch.from_numpy(np.asarray(arrays[p + "time_to_predict"]))
        out = predictor.predict_next(pose, times, tsu, readout="per_row").numpy()
        decoded = arrays[p + "decoded_pose_camera"]
        assert len(case["target_slot_per_row"]) == len(out) == case["batch_size"]
        for row, slot in enumerate(case["target_slot_per_row"]):
            np.testing.assert_allclose(out[row], decoded[row, slot], atol=1e-5)
    assert checked > 0, "no batch of two or more rows in pose_predictor_cases.json"


@pytest.fixture(scope="module")
def encoder(phalp_golden_models):
    return phalp_golden_models[1]


def test_appearance_encoder_matches_reference(phalp_dir, encoder):
    arrays = np.load(phalp_dir / "appearance_encoder_cases.npz")
    raw = torch.from_numpy(arrays["uv_image_raw"])
    assert len(raw) > 0, "no UV images in appearance_encoder_cases.npz"
    uv = process_uv_image(raw)
    np.testing.assert_array_equal(uv.numpy(), arrays["uv_vector"])
    with torch.no_grad():
        out = encoder(uv)
    # README 10: rtol 1e-4. Outputs reach ~100; the atol (the same as `test_texture_distance_matches_reference`
    # allows on the embeddings divided by 1000) covers near-zero ReLU outputs, where the convolution's float32
    # summation order on this CPU moves values by < 1e-4 (about 1e-6 of the output scale).
    np.testing.assert_allclose(out.numpy(), arrays["encoder_output"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(encoder.embed(uv).numpy(), arrays["appe"], rtol=1e-4, atol=1e-4)


def test_texture_distance_matches_reference(phalp_dir, encoder):
    from pipeline.tracking.association import texture_distance

    meta = json.loads((phalp_dir / "appearance_encoder_cases.json").read_text())
    arrays = np.load(phalp_dir / "appearance_encoder_cases.npz")
    uv = arrays["uv_vector"]
    assert meta["pairs"], "no pairs in appearance_encoder_cases.json"
    for pair in meta["pairs"]:
        k = pair["pair"]
        r, emb_t, emb_d = texture_distance(
            encoder, uv[pair["track_uv_index"]][None], uv[pair["det_uv_index"]][None], return_embeddings=True
        )
        np.testing.assert_allclose(emb_t[0], arrays[f"pair{k}_track_emb"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(emb_d[0], arrays[f"pair{k}_det_emb"], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(r[0], pair["r_texture"], rtol=1e-4)


def test_texture_blend_matches_reference(phalp_dir):
    from pipeline.tracking.track import blend_texture

    meta = json.loads((phalp_dir / "appearance_encoder_cases.json").read_text())
    arrays = np.load(phalp_dir / "appearance_encoder_cases.npz")
    out = blend_texture(
        arrays["blend_track_uv_in"], arrays["blend_det_uv_in"], np.float32(meta["blend"]["det_conf"]), meta["blend"]["alpha"]
    )
    assert out.dtype == np.dtype(meta["blend"]["out_dtype"])
    np.testing.assert_allclose(out, arrays["blend_out"], atol=1e-6, rtol=0)
