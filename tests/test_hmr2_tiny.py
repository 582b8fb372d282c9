"""The tiny HMR2 written by our factory, loaded from the official layout; bad input and files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.errors import InputError, WeightsError
from pipeline.imageio import decode_image
from pipeline.models.hmr2 import files as hmr2_files
from pipeline.models.hmr2.convert import read_checkpoint_state_dict
from pipeline.models.hmr2.predictor import HMR2Predictor
from pipeline.models.smpl import read_smpl_pickle
from pipeline.weights import CacheRoots


@pytest.fixture(scope="module")
def predictor(tiny_roots) -> HMR2Predictor:
    return HMR2Predictor.from_cache(tiny_roots, download=False, device="cpu")


@pytest.fixture(scope="module")
def person_image() -> np.ndarray:
    img = np.full((480, 640, 3), 200, np.uint8)
    cv2.circle(img, (320, 110), 35, (60, 80, 120), -1)
    cv2.rectangle(img, (280, 150), (360, 300), (40, 40, 160), -1)
    cv2.line(img, (300, 300), (280, 440), (30, 30, 30), 18)
    cv2.line(img, (340, 300), (360, 440), (30, 30, 30), 18)
    return img


def test_factory_writes_the_official_layout(tiny_roots):
    for f in hmr2_files.FILES:
        assert (tiny_roots.hmr2 / f.path).is_file(), f.path
    state = read_checkpoint_state_dict(tiny_roots.hmr2 / hmr2_files.CHECKPOINT)
    assert any(k.startswith("discriminator.") for k in state) and "initialized" in state
    smpl = read_smpl_pickle(tiny_roots.hmr2 / hmr2_files.SMPL_NEUTRAL)
    assert smpl["f"].shape == (13776, 3) and smpl["v_template"].shape == (6890, 3)
    # The pickle names chumpy's class, like the real file, although chumpy is not installed.
    assert b"chumpy.ch" in (tiny_roots.hmr2 / hmr2_files.SMPL_NEUTRAL).read_bytes()


def test_tiny_predicts_end_to_end(predictor, person_image):
    out = predictor.predict(person_image, [[260, 60, 380, 450]], vertices=True)
    assert len(out) == 1
    for name in ("global_orient", "body_pose", "betas", "cam_t_full", "keypoints_2d", "keypoints_3d", "vertices"):
        assert np.isfinite(getattr(out, name)).all(), name
    assert out.body_pose.shape == (1, 23, 3, 3) and out.vertices.shape == (1, 6890, 3)
    assert out.cam_t_full[0, 2] > 0  # in front of the camera
    # Rotations are orthonormal.
    rot = np.concatenate([out.global_orient, out.body_pose], axis=1)
    assert np.allclose(rot @ rot.transpose(0, 1, 3, 2), np.eye(3), atol=1e-5)


def test_no_boxes_gives_no_people(predictor, person_image):
    out = predictor.predict(person_image, np.zeros((0, 4)))
    assert len(out) == 0 and out.betas.shape == (0, 10)


@pytest.mark.parametrize(
    "boxes, code",
    [
        ([[10, 10, 10, 50]], "box_empty"),
        ([[50, 50, 40, 80]], "box_empty"),
        ([[700, 10, 900, 100]], "box_outside_image"),
        ([[-300, -300, -10, -10]], "box_outside_image"),
        ([[0, 0, float("nan"), 10]], "boxes_invalid"),
        ([[1, 2, 3]], "boxes_invalid"),
        ("not boxes", "boxes_invalid"),
        ([[0, 0, 10**400, 10]], "boxes_invalid"),
        ([[0, 0, 1e30, 1e30]], "box_too_large"),
        ([[-5000, 10, 50, 100]], "box_too_large"),
    ],
)
def test_bad_boxes_are_clear_errors(predictor, person_image, boxes, code):
    with pytest.raises(InputError) as info:
        predictor.predict(person_image, boxes)
    assert info.value.code == code


def test_partly_outside_box_is_padded(predictor, person_image):
    out = predictor.predict(person_image, [[-50, -50, 100, 200]])
    assert np.isfinite(out.betas).all()


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "image_empty"),
        (b"hello, not an image", "image_unsupported_format"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image_unreadable"),
    ],
)
def test_unreadable_images(data, code):
    with pytest.raises(InputError) as info:
        decode_image(data)
    assert info.value.code == code


def test_truncated_and_huge_images(person_image):
    ok, jpg = cv2.imencode(".jpg", person_image)
    with pytest.raises(InputError) as info:
        decode_image(jpg.tobytes()[: len(jpg) // 2])
    assert info.value.code in ("image_truncated", "image_unreadable")
    ok, png = cv2.imencode(".png", person_image)
    with pytest.raises(InputError) as info:
        decode_image(png.tobytes()[: len(png) // 2])
    assert info.value.code == "image_unreadable"
    with pytest.raises(InputError) as info:
        decode_image(png.tobytes(), max_pixels=1000)
    assert info.value.code == "image_too_large" and info.value.status == 413


def test_gray_and_rgba_images_are_accepted(predictor, person_image):
    gray = cv2.cvtColor(person_image, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(person_image, cv2.COLOR_BGR2BGRA)
    for img in (gray, rgba):
        assert len(predictor.predict(img, [[260, 60, 380, 450]])) == 1
    for img in (gray, rgba):
        ok, png = cv2.imencode(".png", img)
        assert decode_image(png.tobytes()).shape == person_image.shape


def _copy_cache(tiny_roots: CacheRoots, dest: Path) -> CacheRoots:
    shutil.copytree(tiny_roots.hmr2, dest / "4DHumans")
    return CacheRoots.under(dest)


def test_missing_smpl_is_one_clear_error(tiny_roots, tmp_path):
    roots = _copy_cache(tiny_roots, tmp_path)
    (roots.hmr2 / hmr2_files.SMPL_NEUTRAL).unlink()
    (roots.hmr2 / hmr2_files.MEAN_PARAMS).unlink()
    with pytest.raises(WeightsError) as info:
        HMR2Predictor.from_cache(roots, download=False)
    msg = info.value.message
    assert info.value.code == "weights_missing"
    assert "smpl.neutral" in msg and "hmr2.mean_params" in msg and "licensed" in msg
    assert str(roots.hmr2 / hmr2_files.SMPL_NEUTRAL) in msg and "basicModel_neutral" in msg


def test_original_smpl_release_name_is_accepted(tiny_roots, tmp_path):
    roots = _copy_cache(tiny_roots, tmp_path)
    smpl = roots.hmr2 / hmr2_files.SMPL_NEUTRAL
    smpl.rename(roots.hmr2 / "data" / hmr2_files.SMPL_ORIGINAL)
    assert len(HMR2Predictor.from_cache(roots, download=False).predict(np.zeros((64, 64, 3), np.uint8), [[0, 0, 32, 64]])) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_keys", "not_a_checkpoint_dict"])
def test_corrupt_or_wrong_checkpoint(tiny_roots, tmp_path, damage):
    roots = _copy_cache(tiny_roots, tmp_path)
    ckpt = roots.hmr2 / hmr2_files.CHECKPOINT
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[: 1 << 20])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00" * (2 << 20))
    elif damage == "wrong_keys":
        state = read_checkpoint_state_dict(ckpt)
        state["backbone.extra.weight"] = torch.zeros(3)
        del state["smpl_head.deccam.bias"]
        torch.save({"state_dict": state}, ckpt)
    else:
        torch.save([1, 2, 3], ckpt)
    with pytest.raises(WeightsError) as info:
        HMR2Predictor.from_cache(roots, download=False)
    assert info.value.code in ("checkpoint_invalid", "checkpoint_mismatch", "weights_corrupt")
    if damage == "wrong_keys":
        assert "backbone.extra.weight" in info.value.message and "smpl_head.deccam.bias" in info.value.message


def test_checkpoint_is_read_without_executing_code(tmp_path):
    """A pickle that names os.system must not run it: unknown globals become inert records."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    state = read_checkpoint_state_dict(path)
    assert set(state) == {"w"} and not (tmp_path / "pwned").exists()


def test_cli_image_with_boxes(tiny_roots, tmp_path, person_image):
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), person_image)
    base = tiny_roots.hmr2.parent
    cmd = [sys.executable, "-m", "pipeline", "image", str(photo), "--cache-dir", str(base), "--offline", "--boxes", "260,60,380,450"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["schema_version"] and len(result["people"]) == 1
    person = result["people"][0]
    assert len(person["smpl"]["body_pose"]) == 23 and len(person["keypoints_2d"]) == 44
    bad = subprocess.run(cmd[:-1] + ["260,60,260,450"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "box_empty"
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "nope.jpg")] + cmd[5:], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["code"] == "image_unreadable"


def test_cli_help():
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "image" in done.stdout and "weights" in done.stdout
