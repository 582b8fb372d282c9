"""docs/coordinates.md against the numbers: its worked example recomputed from the page, its
keypoint table against the SMPL layer's tables, its conventions on a tiny-model result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "coordinates.md"


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_worked_example_pixels_follow_from_its_numbers() -> None:
    part = section("Worked example")
    example = json.loads(re.search(r"```json\n(.*?)```", part, re.S).group(1))
    w, h = example["image"]["width"], example["image"]["height"]
    f = example["camera"]["focal_length_full"]
    t = np.asarray(example["camera"]["t_full"], np.float64)
    assert f == pytest.approx(5000.0 / 256.0 * max(w, h))  # HMR2's focal for this image size
    stated = re.findall(r"^pixel of keypoint (\d+) \(([^)]*)\): \(([-\d.]+), ([-\d.]+)\)$", part, re.M)
    assert len(stated) == 2
    names = keypoint_table()
    for index, name, u, v in stated:
        assert names[int(index)][0] == name
        x, y, z = np.asarray(example[f"keypoints_3d[{index}]"], np.float64) + t
        assert (f * x / z + w / 2, f * y / z + h / 2) == (pytest.approx(float(u), abs=0.01), pytest.approx(float(v), abs=0.01))


def keypoint_table() -> list[tuple[str, str]]:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| ([^|]+) \|$", section("The 44 keypoints"), re.M)
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    return [(name.strip(), source.strip()) for _, name, source in rows]


def test_keypoint_table_is_the_smpl_layers_order() -> None:
    from pipeline.models.smpl import EXTRA_VERTEX_IDS, OPENPOSE_JOINT_MAP

    table = keypoint_table()
    assert len(table) == 44
    assert all(name.startswith("OP ") for name, _ in table[:25]) and not any(n.startswith("OP ") for n, _ in table[25:])
    for i, (_, source) in enumerate(table[:25]):
        joint45 = OPENPOSE_JOINT_MAP[i]  # index into the 24 SMPL joints + the vertex keypoints
        want = f"SMPL joint {joint45}" if joint45 < 24 else f"vertex {EXTRA_VERTEX_IDS[joint45 - 24]}"
        assert source == want, (i, source, want)
    assert [s for _, s in table[25:]] == [f"regressor row {r}" for r in range(19)]
    assert table[8][0] == "OP MidHip" and OPENPOSE_JOINT_MAP[8] == 0  # the pelvis, SMPL's root


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    """A result of the tiny HMR2 on three drawn figures (client boxes: no detector needed)."""
    from serve_helpers import stick_figures

    from pipeline.image import run_image
    from pipeline.render.overlay import SMPLMeshes
    from pipeline.tiny.hmr2 import write_tiny_hmr2
    from pipeline.weights import CacheRoots

    base = tmp_path_factory.mktemp("coords")
    roots = CacheRoots.under(base)
    write_tiny_hmr2(roots)
    photo = base / "scene.png"
    cv2.imwrite(str(photo), stick_figures())
    boxes = [[80, 40, 170, 290], [230, 60, 320, 310], [340, 50, 420, 300]]
    result = run_image(photo, boxes=boxes, roots=roots, device="cpu", download=False)
    return result, SMPLMeshes.from_cache(roots, device="cpu", download=False)


def test_keypoints_2d_are_the_full_image_projection_of_keypoints_3d(tiny_result) -> None:
    result, _ = tiny_result
    w, h = result["image"]["width"], result["image"]["height"]
    assert len(result["people"]) == 3
    for p in result["people"]:
        cam = p["camera"]
        assert cam["focal_length_full"] == pytest.approx(5000.0 / 256.0 * max(w, h))
        s, tx, ty = cam["pred_cam"]
        np.testing.assert_allclose(cam["t_crop"], [tx, ty, 2 * 5000.0 / (256.0 * s)], rtol=1e-5)
        x, y, z = (np.asarray(p["keypoints_3d"], np.float64) + np.asarray(cam["t_full"])).T
        f = cam["focal_length_full"]
        projected = np.stack([f * x / z + w / 2, f * y / z + h / 2], axis=1)
        assert np.abs(projected - np.asarray(p["keypoints_2d"])).max() <= 0.3  # the page: 0.25 px at most


def test_the_pelvis_is_keypoint_8_and_stays_put_when_the_body_turns(tiny_result) -> None:
    result, meshes = tiny_result
    p = result["people"][0]
    orient = torch.tensor(p["smpl"]["global_orient"], dtype=torch.float32).reshape(1, 1, 3, 3)
    pose = torch.tensor(p["smpl"]["body_pose"], dtype=torch.float32).reshape(1, 23, 3, 3)
    betas = torch.tensor(p["smpl"]["betas"], dtype=torch.float32).reshape(1, 10)
    with torch.no_grad():
        out = meshes.body(orient, pose, betas)
        turned = meshes.body(torch.tensor(cv2.Rodrigues(np.array([0.3, 2.0, -0.4]))[0], dtype=torch.float32).reshape(1, 1, 3, 3), pose, betas)
    pelvis = out.joints_smplx45[0, 0].numpy()  # SMPL joint 0
    np.testing.assert_allclose(p["keypoints_3d"][8], pelvis, atol=1e-5)
    np.testing.assert_allclose(turned.joints_smplx45[0, 0].numpy(), pelvis, atol=1e-6)
    assert np.abs(turned.joints[0, 4].numpy() - out.joints[0, 4].numpy()).max() > 0.05  # the rest of the body does move
