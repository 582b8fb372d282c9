"""AMASS-style NPZ: SMPL pose parameters per frame, as the SMPL family of tools reads them.

Layout (float64 unless said): ``poses`` (N, 72) axis-angle, the root's 3 then the 23 body
joints' 3 each; ``trans`` (N, 3) metres; ``betas`` (10,) the track's mean shape;
``mocap_framerate`` (the video's fps); ``gender`` "neutral". The world frame is AMASS's, z up:
x = the camera's right, y = away from the camera (its viewing direction), z = up (the camera's
-y). ``trans`` is SMPL's ``transl``: a body posed with these parameters and shifted by it has
its pelvis where the result put it, ``J_pelvis(betas) + trans = world @ (J_pelvis(betas_k) +
t_full)`` (see `pipeline.export.motion`).

Extra keys say what the standard ones do not: ``frame_index`` and ``time_s`` of each row in the
video, ``detected`` (False: a gap filled by interpolation), ``track_id``, ``camera_to_world``
(the rotation applied to the camera frame), ``units`` and ``axes`` as text.
"""

from __future__ import annotations

import io

import numpy as np

from .body import CAMERA_TO_Z_UP, BodyModel
from .motion import track_fps, track_motion
from .rotations import quaternion_to_axis_angle
from .source import TrackArrays

AXES = "z up: x = camera right, y = away from the camera, z = up (camera -y); SMPL transl convention"


def amass_npz(track: TrackArrays, body: BodyModel, *, video_fps: float | None) -> bytes:
    """One track as an AMASS-style ``.npz`` (see the module docstring)."""
    fps = track_fps(video_fps, track)
    motion = track_motion(track, body, CAMERA_TO_Z_UP, uniform=True)
    poses = quaternion_to_axis_angle(motion.quats).reshape(len(motion), 72)
    trans = motion.pelvis - body.joints(motion.betas)[0]
    buf = io.BytesIO()
    np.savez(
        buf,
        poses=poses.astype(np.float64),
        trans=trans.astype(np.float64),
        betas=motion.betas.astype(np.float64),
        mocap_framerate=np.float64(fps),
        gender=np.array("neutral"),
        surface_model_type=np.array("smpl"),
        frame_index=motion.frame_index,
        time_s=motion.time_s,
        detected=motion.detected,
        track_id=np.int64(track.track_id),
        camera_to_world=CAMERA_TO_Z_UP,
        units=np.array("metres"),
        axes=np.array(AXES),
    )
    return buf.getvalue()
