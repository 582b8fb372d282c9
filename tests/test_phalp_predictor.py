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


def _dense_lart_attention(attn, x, masked):
    """LART's attention as published: all queries, keys and values, masked logits set to -1000."""
    b, n, _ = x.shape
    qkv = x @ attn.to_qkv.weight.T
    q, k, v = (t.reshape(b, n, attn.heads, -1).permute(0, 2, 1, 3) for t in qkv.chunk(3, dim=-1))
    logits = (q @ k.transpose(-1, -2)) * attn.scale
    if masked is not None:
        logits = torch.where(masked[:, None, None, :], torch.tensor(-1000.0), logits)
    out = (torch.softmax(logits, dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, n, -1)
    return attn.to_out(out)


@pytest.mark.parametrize("empty_row", [False, True], ids=["every-row-seen", "a-row-never-seen"])
def test_keys_only_at_detections_equal_the_dense_masked_attention(empty_row):
    """Keys and values are computed only at slots holding a detection (and queries only where the
    last layer is read); the result must equal LART's dense computation, including the uniform
    attention of a row that has no detection at all."""
    from pipeline.models.phalp.config import PosePredictorConfig
    from pipeline.models.phalp.predictor import PhalpPoseTransformer

    torch.manual_seed(0)
    cfg = PosePredictorConfig(in_feat=32, frame_length=25, pose_dim=229, mid_dim=40, depth=3, heads=4,
                              dim_head=8, mlp_dim=48, smpl_head_hidden=64)
    net = PhalpPoseTransformer(cfg).eval()
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.2)
    b, length = 4, cfg.frame_length
    canvas = torch.randn(b, length, cfg.pose_dim)
    has = torch.rand(b, length) < 0.2
    has[:, 3] = True  # every row at least one detection ...
    has[1] = False
    has[1, [0, 7, 8, 24]] = True  # ... and rows with different counts
    if empty_row:
        has[2] = False

    def dense(x, masked, layers):
        for attn, ff in layers:
            x = x + _dense_lart_attention(attn.fn, attn.norm(x), masked)
            x = x + ff.fn(ff.norm(x))
        return x

    with torch.no_grad():
        x = net.pose_shape_encoder(canvas)
        x = torch.where(has[..., None], x, net.mask_token)
        x = dense(x + net.pos_embedding_learned1, ~has, net.transformer1.layers)
        x = net.conv_de(net.conv_en(x.transpose(1, 2))).transpose(1, 2)
        expected = dense(x + net.pos_embedding_learned2, None, net.transformer2.layers)
        tokens = net(canvas, has)
        read = torch.tensor([24, 0, 11, 5])
        picked = net(canvas, has, read=read)
    np.testing.assert_allclose(tokens.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(picked.numpy(), expected[torch.arange(b), read].numpy(), rtol=1e-5, atol=1e-5)
