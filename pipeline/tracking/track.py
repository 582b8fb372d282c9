"""One track's state (PHALP / deep_sort ``Track``) and its texture blending."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .observation import DetectionRecord


class TrackState(str, Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    DELETED = "deleted"


def blend_texture(old_uv: np.ndarray, new_uv: np.ndarray, conf: np.float32, alpha: float) -> np.ndarray:
    """PHALP ``Track.update`` texture blending of the track's map with a new detection's.

    Texels seen in both mix with weight ``alpha * conf**2`` for the new one; texels seen in only
    one keep that one; the mask channel is +1 where either was seen, else -1. Returns float64
    (4, S, S), the precision the reference keeps after blending.
    """
    mix = alpha * (np.float32(conf) ** 2)  # a float32 scalar under NumPy 2 promotion, as the reference
    old_seen = old_uv[3] == 1
    new_seen = new_uv[3] == 1
    # Whole-array arithmetic with the reference's dtypes (mix * new in float32, the sum in
    # float64), then a selection: bit for bit the values the reference assigns through masks.
    mixed = (1 - mix) * old_uv[:3] + mix * new_uv[:3]
    out = np.empty((4,) + old_uv.shape[1:], dtype=np.float64)
    out[:3] = np.where(old_seen & new_seen, mixed, np.where(old_seen, old_uv[:3], np.where(new_seen, new_uv[:3], 0.0)))
    out[3] = np.where(old_seen | new_seen, 1.0, -1.0)
    return out


@dataclass
class Track:
    """A tracked person: state counters, detection history, and the latest predicted cues.

    ``history`` holds the last ``track_history`` detections, oldest first; a new track holds its
    first detection repeated (as deep_sort's deque is filled). ``pred_pose``/``pred_loca`` are the
    vectors the next frame's cost compares against; ``pred_uv`` the blended texture (None until a
    detection brought one).
    """

    track_id: int
    state: TrackState
    hits: int
    age: int
    time_since_update: int
    history: list[DetectionRecord]
    pred_pose: np.ndarray
    pred_loca: np.ndarray
    pred_appe: np.ndarray | None
    pred_uv: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_confirmed(self) -> bool:
        return self.state is TrackState.CONFIRMED

    @property
    def is_tentative(self) -> bool:
        return self.state is TrackState.TENTATIVE

    @property
    def is_deleted(self) -> bool:
        return self.state is TrackState.DELETED
