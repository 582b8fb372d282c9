"""A track as an animation: joint rotations and the pelvis path, in an export's world frame.

HMR2 poses the body about its pelvis and leaves the position to the camera: the pelvis of a
detection is at ``J_pelvis(betas) + t_full`` in the camera frame (OpenCV axes, metres). That
point, not ``t_full`` itself, is what every exporter moves; each tool's own translation
convention is derived from it (see `pipeline.export.amass`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .body import BodyModel
from .rotations import continuous, matrix_to_quaternion, quaternion_multiply, slerp
from .source import TrackArrays

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30.0


@dataclass
class Motion:
    """One track's keys: per key a video frame, its time, 24 local joint rotations and the pelvis."""

    track_id: int
    frame_index: np.ndarray  # (M,) video frames (0-based)
    time_s: np.ndarray  # (M,) seconds from the video start
    detected: np.ndarray  # (M,) bool: False where a gap in the track was filled by interpolation
    quats: np.ndarray  # (M, 24, 4) x, y, z, w: the root's in the world frame, the others local to the parent
    pelvis: np.ndarray  # (M, 3) pelvis position, metres, world frame
    betas: np.ndarray  # (10,) the track's mean betas (HMR2's per-frame shape estimates, averaged)

    def __len__(self) -> int:
        return len(self.frame_index)


def track_fps(video_fps: float | None, track: TrackArrays) -> float:
    """The video's frame rate; else the track's median frame spacing; else 30 (logged)."""
    if video_fps and video_fps > 0:
        return float(video_fps)
    if len(track) > 1:
        per_frame = np.diff(track.time_s) / np.maximum(np.diff(track.frame_index), 1)
        spacing = float(np.median(per_frame))
        if spacing > 0:
            return 1.0 / spacing
    logger.warning("the result states no frame rate; %g fps assumed", DEFAULT_FPS)
    return DEFAULT_FPS


def track_motion(track: TrackArrays, body: BodyModel, world: np.ndarray, *, uniform: bool) -> Motion:
    """The track's keys in the frame ``world @ camera``.

    ``uniform``: one key per video frame from the track's first to its last (BVH and AMASS have
    no timestamps); frames where the track was not detected are filled by slerp of each joint
    and linear interpolation of the pelvis between the detections either side. Otherwise one
    key per detection (glTF keys carry their own times).
    """
    quats = matrix_to_quaternion(track.rotations)  # (N, 24, 4)
    pelvis = body.joints(track.betas)[:, 0] + track.t_full  # camera frame
    frames, times, detected = track.frame_index, track.time_s, np.ones(len(track), bool)
    if uniform and len(track) > 1:
        grid = np.arange(frames[0], frames[-1] + 1)
        after = np.searchsorted(frames, grid)  # first detection at or after each grid frame
        hit = (after < len(frames)) & (frames[np.minimum(after, len(frames) - 1)] == grid)
        nxt = np.clip(after, 1, len(frames) - 1)
        prv = nxt - 1
        t = np.where(hit, 0.0, (grid - frames[prv]) / np.maximum(frames[nxt] - frames[prv], 1))
        take = np.where(hit, after, prv).clip(0, len(frames) - 1)
        q = np.where(hit[:, None, None], quats[take], slerp(quats[prv], quats[nxt], t[:, None] * np.ones((1, 24))))
        p = np.where(hit[:, None], pelvis[take], pelvis[prv] + t[:, None] * (pelvis[nxt] - pelvis[prv]))
        ts = np.where(hit, times[take], times[prv] + t * (times[nxt] - times[prv]))
        quats, pelvis, frames, times, detected = q, p, grid, ts, hit
    world_q = matrix_to_quaternion(world)
    quats = quats.copy()
    quats[:, 0] = quaternion_multiply(world_q, quats[:, 0])
    return Motion(
        track_id=track.track_id,
        frame_index=np.asarray(frames, np.int64),
        time_s=np.asarray(times, np.float64),
        detected=np.asarray(detected, bool),
        quats=continuous(quats),
        pelvis=pelvis @ np.asarray(world, np.float64).T,
        betas=track.betas.mean(axis=0),
    )
