"""BVH with SMPL's 24-joint skeleton.

* Hierarchy: SMPL's joint names and kinematic tree; each joint's OFFSET is its rest position
  minus its parent's, from the user's SMPL model shaped by the track's mean betas (the root's
  is zero: its position channels carry it). Leaf joints end in an End Site half as long as
  their own bone, in its direction.
* Channels: the root ``Xposition Yposition Zposition Zrotation Yrotation Xrotation``, every
  other joint ``Zrotation Yrotation Xrotation``: a joint's rotation is Rz @ Ry @ Rx (intrinsic
  Z, Y, X), in degrees.
* Units: centimetres (BVH states none; most tools read BVH as centimetres).
* Axes: y up, x = the camera's right, z = towards the camera; a person facing the camera
  faces +z. The root position is the pelvis.
* One frame per video frame from the track's first to its last; gaps are interpolated.
  Frame Time = 1 / fps.
"""

from __future__ import annotations

import numpy as np

from .body import CAMERA_TO_Y_UP, JOINT_NAMES, BodyModel
from .motion import track_fps, track_motion
from .rotations import matrix_to_euler_zyx, quaternion_to_matrix
from .source import TrackArrays

CENTIMETRES = 100.0


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{v:.6f}" for v in np.asarray(values).ravel())


def bvh_text(track: TrackArrays, body: BodyModel, *, video_fps: float | None) -> str:
    """One track as BVH text (see the module docstring)."""
    fps = track_fps(video_fps, track)
    motion = track_motion(track, body, CAMERA_TO_Y_UP, uniform=True)
    rest = body.joints(motion.betas) * CENTIMETRES
    children = body.children
    lines = ["HIERARCHY"]
    order: list[int] = []  # joints in the order their channels appear in each frame

    def joint(j: int, depth: int) -> None:
        pad = "  " * depth
        order.append(j)
        parent = body.parents[j]
        if parent < 0:
            lines.append(f"{pad}ROOT {JOINT_NAMES[j]}")
            offset = np.zeros(3)
        else:
            lines.append(f"{pad}JOINT {JOINT_NAMES[j]}")
            offset = rest[j] - rest[parent]
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {_fmt(offset)}")
        if parent < 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation")
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation")
        for c in children[j]:
            joint(c, depth + 1)
        if not children[j]:
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {_fmt(0.5 * offset)}", pad + "  }"])
        lines.append(pad + "}")

    joint(0, 0)
    euler = np.degrees(matrix_to_euler_zyx(quaternion_to_matrix(motion.quats)))  # (M, 24, 3) z, y, x
    position = motion.pelvis * CENTIMETRES
    lines += ["MOTION", f"Frames: {len(motion)}", f"Frame Time: {1.0 / fps:.8f}"]
    for k in range(len(motion)):
        lines.append(_fmt(position[k]) + " " + _fmt(euler[k, order]))
    return "\n".join(lines) + "\n"
