"""Synthetic people for tests and benchmarks: boxes, SMPL, cameras and UV textures per frame.

People walk in straight lines (so paths can cross), each with a fixed shirt colour and body
shape; the camera is consistent with the box so the location cue sees the walk. Frames are
generated lazily: a UV map is 1 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .observation import PersonObservation
from .tracker import FrameInput


@dataclass(frozen=True)
class Walker:
    x0: float  # box centre x at frame 0, pixels
    vx: float  # pixels per frame
    y0: float  # box centre y, pixels
    height: float  # box height, pixels
    colour: tuple[float, float, float]  # UV texture colour (processed units)
    betas_offset: float


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)


def walkers(n: int, image_size: tuple[int, int] = (720, 1280), seed: int = 0) -> list[Walker]:
    """``n`` people spread over the image, alternately walking left and right (paths cross)."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    out = []
    for i in range(n):
        direction = 1 if i % 2 == 0 else -1
        out.append(
            Walker(
                x0=float(w * (0.1 + 0.8 * rng.random())),
                vx=float(direction * rng.uniform(3, 8)),
                y0=float(h * rng.uniform(0.45, 0.55)),
                height=float(rng.uniform(220, 330)),
                colour=tuple(float(v) for v in rng.uniform(-0.4, 0.4, 3)),  # type: ignore[arg-type]
                betas_offset=float(rng.normal(0, 1)),
            )
        )
    return out


def person(walker: Walker, frame: int, rng: np.random.Generator, *, uv: bool = True, uv_size: int = 256) -> PersonObservation:
    h = walker.height * (1 + rng.normal(0, 0.01))
    w = h * 0.4
    cx = walker.x0 + walker.vx * frame + rng.normal(0, 2.0)
    cy = walker.y0 + rng.normal(0, 2.0)
    bbox = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)
    body = np.tile(np.eye(3, dtype=np.float32), (23, 1, 1)) + rng.normal(0, 0.02, (23, 3, 3)).astype(np.float32)
    texture = None
    if uv:
        seen = rng.random((uv_size, uv_size)) < 0.3
        texture = np.empty((4, uv_size, uv_size), dtype=np.float32)
        for c in range(3):
            texture[c] = np.where(seen, walker.colour[c] + rng.normal(0, 0.02), 0)
        texture[3] = np.where(seen, 1, -1)
    return PersonObservation(
        bbox=bbox,
        score=float(rng.uniform(0.85, 0.99)),
        global_orient=_rot_x(np.pi)[None] @ _rot_x(rng.normal(0, 0.05))[None],
        body_pose=body,
        betas=(np.full(10, walker.betas_offset) + rng.normal(0, 0.05, 10)).astype(np.float32),
        pred_cam=np.array([1.0 + rng.normal(0, 0.01), rng.normal(0, 0.01), rng.normal(0, 0.01)], dtype=np.float32),
        uv=texture,
        crop_center=np.array([cx, cy]),
        crop_size=float(h),
    )


def sequence(
    n_people: int,
    n_frames: int,
    *,
    image_size: tuple[int, int] = (720, 1280),
    seed: int = 0,
    missing: dict[int, set[int]] | None = None,
    uv: bool = True,
) -> Iterator[tuple[FrameInput, list[int]]]:
    """Frames with their ground-truth person index per detection; ``missing[p]`` = frames without p.

    People whose box has left the image are not detected.
    """
    rng = np.random.default_rng(seed + 1)
    people = walkers(n_people, image_size, seed)
    h, w = image_size
    missing = missing or {}
    for t in range(n_frames):
        obs, gt = [], []
        for p, walker in enumerate(people):
            if t in missing.get(p, set()):
                continue
            o = person(walker, t, rng, uv=uv)
            x1, _, x2, _ = o.bbox
            if x2 < 0 or x1 > w:
                continue
            obs.append(o)
            gt.append(p)
        yield FrameInput(t, obs, image_size), gt
