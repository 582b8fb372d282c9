"""Write docs/img/overlay-example.png and print the worked example of docs/coordinates.md.

Three people posed by hand (the project's synthetic tiny SMPL, no licensed file), placed with
HMR2's full-image camera in a 640x360 frame, written as an image result, then drawn by
``python -m pipeline render ... --side-view``. The first person's numbers are the worked
example of docs/coordinates.md.

    python scripts/overlay_example.py [--out docs/img/overlay-example.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cli import main as cli  # noqa: E402
from pipeline.render.overlay import SMPLMeshes  # noqa: E402
from pipeline.tiny.hmr2 import write_tiny_hmr2  # noqa: E402
from pipeline.weights import CacheRoots  # noqa: E402

WIDTH, HEIGHT = 640, 360
FOCAL = 5000.0 / 256.0 * max(WIDTH, HEIGHT)  # HMR2's focal_length_full for this frame
FLIP = np.diag([1.0, -1.0, -1.0])  # SMPL's y-up body into the camera's y-down frame, facing it


def rot(axis_angle: tuple[float, float, float]) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(axis_angle, np.float64))[0]


# (t_full, root turn, {SMPL joint: axis-angle}) per person; joints: 1/2 hips, 4/5 knees,
# 16/17 shoulders, 18/19 elbows
PEOPLE = (
    ((-0.9, 0.12, 75.0), (0.0, 0.3, 0.0), {16: (0.0, 0.0, -1.2), 17: (0.0, 0.0, 1.2), 1: (-0.3, 0.0, 0.0), 2: (0.3, 0.0, 0.0)}),
    ((0.15, 0.05, 82.0), (0.0, -0.5, 0.0), {16: (0.0, 0.0, 0.6), 18: (0.0, -1.3, 0.0), 17: (0.0, 0.0, 1.3), 4: (0.5, 0.0, 0.0)}),
    ((1.05, 0.16, 70.0), (0.0, 0.9, 0.0), {16: (0.0, 0.0, -1.3), 17: (0.0, 0.0, 0.2), 19: (0.0, 1.2, 0.0), 2: (-0.4, 0.0, 0.0), 5: (0.7, 0.0, 0.0)}),
)


def scene() -> np.ndarray:
    """A plain backdrop: a wall and a floor."""
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None]
    wall = np.stack([190 - 40 * rows, 200 - 30 * rows, 205 - 20 * rows], axis=-1)
    img = np.broadcast_to(wall, (HEIGHT, WIDTH, 3)).copy()
    img[int(HEIGHT * 0.78) :] = (120, 130, 140)
    return img.astype(np.uint8)


def image_result(meshes: SMPLMeshes) -> dict:
    people = []
    for i, (t_full, turn, bends) in enumerate(PEOPLE):
        pose = [np.eye(3) for _ in range(23)]
        for joint, aa in bends.items():
            pose[joint - 1] = rot(aa)
        orient = FLIP @ rot(turn)
        with torch.no_grad():
            out = meshes.body(torch.tensor(orient, dtype=torch.float32)[None, None], torch.tensor(np.stack(pose), dtype=torch.float32)[None], torch.zeros(1, 10))
        joints = out.joints[0].numpy().astype(np.float64)
        cam = joints + np.asarray(t_full)
        pixels = np.stack([FOCAL * cam[:, 0] / cam[:, 2] + WIDTH / 2, FOCAL * cam[:, 1] / cam[:, 2] + HEIGHT / 2], axis=1)
        lo, hi = pixels.min(0), pixels.max(0)
        people.append({
            "person_index": i,
            "track_id": None,
            "bbox": [round(float(v), 2) for v in (*lo, *hi)],
            "score": None,
            "smpl": {"global_orient": np.round(orient, 6).tolist(), "body_pose": [np.round(p, 6).tolist() for p in pose], "betas": [0.0] * 10},
            "camera": {"pred_cam": [0.0, 0.0, 0.0], "t_crop": [0.0, 0.0, 0.0], "focal_length_crop": 5000.0,
                       "t_full": list(t_full), "focal_length_full": FOCAL},
            "keypoints_2d": np.round(pixels, 3).tolist(),
            "keypoints_3d": np.round(joints, 5).tolist(),
            "vertices": None,
        })
    return {"schema_version": "1.0", "image": {"width": WIDTH, "height": HEIGHT}, "people": people, "models": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "overlay-example.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="overlay-example-") as tmp:
        base = Path(tmp)
        write_tiny_hmr2(CacheRoots.under(base))
        result = image_result(SMPLMeshes.from_cache(CacheRoots.under(base), device="cpu", download=False))
        (base / "result.json").write_text(json.dumps(result))
        cv2.imwrite(str(base / "scene.png"), scene())
        code = cli(["render", str(base / "scene.png"), str(base / "result.json"), "--out", str(args.out),
                    "--cache-dir", str(base), "--device", "cpu", "--side-view"])
        if code != 0:
            raise SystemExit(code)
    first = result["people"][0]
    example = {
        "image": result["image"],
        "camera": {"t_full": first["camera"]["t_full"], "focal_length_full": first["camera"]["focal_length_full"]},
        "keypoints_3d[4]": first["keypoints_3d"][4],
        "keypoints_3d[8]": first["keypoints_3d"][8],
    }
    print(json.dumps(example, indent=2))
    print("keypoints_2d[4] =", first["keypoints_2d"][4], " keypoints_2d[8] =", first["keypoints_2d"][8])


if __name__ == "__main__":
    main()
