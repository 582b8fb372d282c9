"""What the tracker is fed per person, and the detection vectors PHALP builds from it.

The vectors follow PHALP's ``get_human_features`` as 4D-Humans drives it: the pose vector
(``smpl_to_pose_camera_vector``), the location vector (2D joints of ``HMAR.get_3d_parameters``
plus the camera translation three times) and the processed UV texture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..models.phalp.config import PhalpConfig

NUM_JOINTS_3D = 44  # SMPL output joints of HMR2.0 / PHALP: 25 OpenPose + 19 extra


@dataclass
class PersonObservation:
    """One person in one frame, as the detector, HMR2.0 and the appearance step describe it.

    Fields (all NumPy; float32 unless said):
      bbox: (4,) float64, detector box ``x1, y1, x2, y2`` in image pixels.
      score: detector score in [0, 1].
      global_orient: (1, 3, 3) SMPL root rotation matrix (HMR2 ``pred_smpl_params``).
      body_pose: (23, 3, 3) SMPL body joint rotation matrices.
      betas: (10,) SMPL shape.
      pred_cam: (3,) HMR2's crop camera ``(s, tx, ty)``.
      uv: (4, 256, 256) processed UV texture (`process_uv_image` units: RGB / 5, mask +-1);
        None means "nothing seen" (all texels masked out).
      appearance: (4096,) appearance embedding of ``uv`` (kept with the track; the default cost
        re-encodes masked texture pairs instead). Optional.
      joints_3d: (44, 3) SMPL joints in metres, rotated by the root but not translated (HMR2
        ``pred_keypoints_3d``). Optional: only their projection into the location vector uses them,
        and the location cue reads the body origin, which does not depend on them.
      crop_center: (2,) centre of the square crop ``pred_cam`` refers to, pixels. Optional:
        default is 4D-Humans' crop, the box expanded to aspect 192:256 around its centre.
      crop_size: side of that square crop, pixels (default as ``crop_center``).
      extra: anything to carry along (e.g. the detection's index before filtering).
    """

    bbox: np.ndarray
    score: float
    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    pred_cam: np.ndarray
    uv: np.ndarray | None = None
    appearance: np.ndarray | None = None
    joints_3d: np.ndarray | None = None
    crop_center: np.ndarray | None = None
    crop_size: float | None = None
    extra: Any = None


@dataclass
class DetectionRecord:
    """A detection as the tracker stores it in a track's history (PHALP ``Detection.detection_data``)."""

    time: int  # frame index
    index: int  # position in the frame's input list
    bbox_tlwh: np.ndarray  # (4,) float64 x, y, w, h
    conf: np.float32
    pose: np.ndarray  # (229,) float32
    loca: np.ndarray  # (99,) float32
    appe: np.ndarray | None = None  # (4096,) float32
    uv: np.ndarray | None = field(default=None, repr=False)  # (4, 256, 256) float32; not kept in history
    extra: Any = None


def expand_to_aspect(bbox_xyxy: np.ndarray, aspect_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """4D-Humans ``expand_bbox_to_aspect_ratio``: grow the box to aspect w:h -> (center, (w, h))."""
    x1, y1, x2, y2 = bbox_xyxy
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = x2 - x1, y2 - y1
    wt, ht = aspect_wh
    if h / w < ht / wt:
        size = np.array([w, max(w * ht / wt, h)])
    else:
        size = np.array([max(h * wt / ht, w), h])
    return center, size


def square_frame(image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(H, W) -> (M, left, top): side of the square-padded frame and the padding offsets."""
    h, w = image_size
    m = max(h, w)
    return m, (m - w) // 2, (m - h) // 2


def build_detection(
    person: PersonObservation, *, time: int, index: int, image_size: tuple[int, int], config: PhalpConfig
) -> DetectionRecord:
    """PHALP's detection vectors for one person (``get_human_features``), float32 as the reference.

    Camera translation in the square-padded 256 frame (``HMAR.get_3d_parameters``):
    ``tz = 2 f / (s * crop_side * r)``, ``(tx, ty) = cam[1:] + (c * r - 128) * tz / f`` with
    ``r = 256 / max(H, W)`` and ``c`` the crop centre shifted into the padded frame.
    """
    res, focal = config.render_res, config.focal_length
    m, left, top = square_frame(image_size)
    ratio = 1.0 / int(m) * res
    bbox = np.asarray(person.bbox, dtype=np.float64)
    if person.crop_center is None or person.crop_size is None:
        center, size = expand_to_aspect(bbox, config.expand_bbox_shape)
        side = float(np.max(size))
    else:
        center, side = np.asarray(person.crop_center, dtype=np.float64), float(person.crop_size)
    c = (center + np.array([left, top])) * ratio
    f32 = torch.float32
    cam = torch.tensor(np.asarray(person.pred_cam, dtype=np.float32)).reshape(1, 3)
    # float32 product, as NumPy evaluates ``max(scale) * ratio`` on the reference's float32 boxes.
    scale = torch.tensor([np.float32(side) * np.float32(ratio)], dtype=f32)
    focal_t = focal * torch.ones(1, 2, dtype=f32)
    cam_t = torch.stack([cam[:, 1], cam[:, 2], 2 * focal_t[:, 0] / (cam[:, 0] * scale + 1e-9)], dim=1)
    cam_t[:, :2] += torch.tensor(c - res / 2.0, dtype=f32) * cam_t[:, [2]] / focal_t

    joints = np.zeros((NUM_JOINTS_3D + 1, 3), dtype=np.float32)
    if person.joints_3d is not None:
        joints[:NUM_JOINTS_3D] = np.asarray(person.joints_3d, dtype=np.float32).reshape(NUM_JOINTS_3D, 3)
    pts = torch.from_numpy(joints)[None] + cam_t[:, None, :]
    proj = pts / pts[:, :, -1:]
    fn = focal / res
    xy = torch.stack([proj[:, :, 0] * fn, proj[:, :, 1] * fn], dim=-1)
    joints_2d = ((xy + 0.5) * res).reshape(1, -1) / res

    loca = torch.cat([joints_2d, cam_t, cam_t, cam_t], dim=1)[0].numpy().astype(np.float32)
    cam_vec = cam_t.clone()
    cam_vec[:, 2] = cam_vec[:, 2] / 200.0
    pose = np.concatenate(
        [
            np.asarray(person.global_orient, dtype=np.float32).reshape(-1),
            np.asarray(person.body_pose, dtype=np.float32).reshape(-1),
            np.asarray(person.betas, dtype=np.float32).reshape(-1),
            cam_vec[0].numpy(),
        ]
    ).astype(np.float32)
    x1, y1, x2, y2 = bbox
    uv = None if person.uv is None else np.asarray(person.uv, dtype=np.float32)
    appe = None if person.appearance is None else np.asarray(person.appearance, dtype=np.float32).reshape(-1)
    return DetectionRecord(
        time=int(time),
        index=int(index),
        bbox_tlwh=np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float64),
        conf=np.float32(person.score),
        pose=pose,
        loca=loca,
        appe=appe,
        uv=uv,
        extra=person.extra,
    )


def check_person(person: PersonObservation, uv_size: int) -> str | None:
    """Why ``person`` cannot be tracked (non-finite or malformed values), or None if it can."""
    try:
        arrays = {
            "bbox": (np.asarray(person.bbox, dtype=np.float64), (4,)),
            "global_orient": (np.asarray(person.global_orient, dtype=np.float64), (1, 3, 3)),
            "body_pose": (np.asarray(person.body_pose, dtype=np.float64), (23, 3, 3)),
            "betas": (np.asarray(person.betas, dtype=np.float64), (10,)),
            "pred_cam": (np.asarray(person.pred_cam, dtype=np.float64), (3,)),
        }
        if person.joints_3d is not None:
            arrays["joints_3d"] = (np.asarray(person.joints_3d, dtype=np.float64), (NUM_JOINTS_3D, 3))
        if person.uv is not None:
            arrays["uv"] = (np.asarray(person.uv, dtype=np.float64), (4, uv_size, uv_size))
        if person.crop_center is not None:
            arrays["crop_center"] = (np.asarray(person.crop_center, dtype=np.float64), (2,))
        score = float(person.score)
        crop_size = None if person.crop_size is None else float(person.crop_size)
    except (TypeError, ValueError) as exc:
        return f"unreadable values ({exc})"
    for name, (arr, shape) in arrays.items():
        if arr.size != int(np.prod(shape)):
            return f"{name} expected shape {shape}, got {arr.shape}"
        if not np.all(np.isfinite(arr)):
            return f"{name} holds NaN or infinite values"
    if not np.isfinite(score):
        return "score is NaN or infinite"
    if crop_size is not None and not (np.isfinite(crop_size) and crop_size > 0):
        return f"crop_size expected a positive finite number, got {crop_size}"
    if person.appearance is not None and not np.all(np.isfinite(np.asarray(person.appearance, dtype=np.float64))):
        return "appearance holds NaN or infinite values"
    if float(person.pred_cam[0]) <= 0:
        return f"pred_cam scale expected > 0, got {float(person.pred_cam[0])}"
    return None


def check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise InputError("image_size_invalid", f"expected image_size as (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise InputError("image_size_invalid", f"expected a positive (height, width), got {(h, w)}")
    return h, w
