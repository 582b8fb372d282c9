"""The versioned result documents that leave the process (HTTP bodies, ``--out`` files).

Pydantic models, so the serving layer publishes them in OpenAPI and tests can validate any
result against the JSON schema. Numbers are plain lists of floats; rotation matrices are
row-major 3x3 lists. Bump `SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
from pydantic import BaseModel, Field

from .models.hmr2.predictor import HMR2Output

SCHEMA_VERSION = "1.0"

# What the ``models`` field of a result names, per stage (the detector: the default one's).
MODEL_NAMES = {"detector": "vitdet_h_cascade", "mesh": "hmr2.0b", "tracker": "phalp"}


def models_used(*stages: str, detector: str = "vitdet") -> dict[str, str]:
    """The ``models`` field for the stages that produced a result; ``detector``: which one ran
    (`pipeline.models.detectors`)."""
    from .models.detectors import detector_model_id

    names = {**MODEL_NAMES, "detector": detector_model_id(detector)}
    return {stage: names[stage] for stage in stages}

Mat3 = list[list[float]]


class SMPLParams(BaseModel):
    """SMPL parameters as rotation matrices (camera-aligned body frame) and 10 shape betas."""

    global_orient: Mat3 = Field(description="root rotation, 3x3")
    body_pose: list[Mat3] = Field(description="23 joint rotations relative to their parents, 23x3x3")
    betas: list[float] = Field(description="10 shape coefficients")


class Camera(BaseModel):
    """Cameras that place the (untranslated) mesh and joints.

    Full image: pinhole with focal ``focal_length_full`` px, principal point at the image
    centre, OpenCV axes (x right, y down, z forward); points = joints + ``t_full``.
    Crop: the same for the 256-px square crop with focal ``focal_length_crop``.
    Worked through, with the body frame and the 44 keypoints, in docs/coordinates.md.
    """

    pred_cam: list[float] = Field(description="weak-perspective crop camera (s, tx, ty)")
    t_crop: list[float] = Field(description="translation for the crop camera, metres")
    focal_length_crop: float
    t_full: list[float] = Field(description="translation for the full-image camera, metres")
    focal_length_full: float


class Person(BaseModel):
    person_index: int = Field(description="index of the person in this image or frame")
    track_id: Optional[int] = Field(default=None, description="stable id across frames (videos only)")
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: Optional[float] = Field(default=None, description="detection score (None for client-supplied boxes)")
    smpl: SMPLParams
    camera: Camera
    keypoints_2d: list[list[float]] = Field(description="44 joints (OpenPose BODY_25 + 19 extra) in image pixels, x, y")
    keypoints_3d: list[list[float]] = Field(description="the same 44 joints in metres, body frame, not translated")
    vertices: Optional[list[list[float]]] = Field(default=None, description="6890 SMPL vertices in metres (on request)")


class ImageInfo(BaseModel):
    width: int
    height: int


class ImageResult(BaseModel):
    schema_version: str = SCHEMA_VERSION
    image: ImageInfo
    people: list[Person]
    models: dict[str, str] = Field(default_factory=dict, description="model names that produced this result")


def _r(a: np.ndarray, digits: int | None) -> list:
    a = np.asarray(a, dtype=np.float64)
    return (np.round(a, digits) if digits is not None else a).tolist()


def people_from_outputs(
    out: HMR2Output,
    *,
    scores: np.ndarray | None = None,
    track_ids: list[int | None] | None = None,
    vertices: bool = False,
    digits: int | None = None,
) -> list[Person]:
    """One `Person` per row of an `HMR2Output`. ``digits`` rounds floats (smaller JSON)."""
    people = []
    for i in range(len(out)):
        people.append(
            Person(
                person_index=i,
                track_id=None if track_ids is None else track_ids[i],
                bbox=_r(out.boxes[i], digits),
                score=None if scores is None else float(scores[i]),
                smpl=SMPLParams(
                    global_orient=_r(out.global_orient[i, 0], digits),
                    body_pose=_r(out.body_pose[i], digits),
                    betas=_r(out.betas[i], digits),
                ),
                camera=Camera(
                    pred_cam=_r(out.pred_cam[i], digits),
                    t_crop=_r(out.cam_t[i], digits),
                    focal_length_crop=float(out.focal_length[i]),
                    t_full=_r(out.cam_t_full[i], digits),
                    focal_length_full=float(out.focal_length_full[i]),
                ),
                keypoints_2d=_r(out.keypoints_2d[i], digits),
                keypoints_3d=_r(out.keypoints_3d[i], digits),
                vertices=_r(out.vertices[i], digits) if vertices and out.vertices is not None else None,
            )
        )
    return people


class VideoRange(BaseModel):
    """The part of the video a result covers, when only a range was asked for."""

    start_frame: int = Field(description="index of the first frame in the result (inclusive)")
    end_frame: int = Field(description="one past the index of the last frame in the result (exclusive)")
    requested: dict[str, Union[int, float]] = Field(
        description="the range as asked: start_frame/end_frame, or start_s/end_s (seconds of time_s); start inclusive, end exclusive"
    )


class VideoMeta(BaseModel):
    width: int = Field(description="frame width after applying rotation metadata")
    height: int
    fps: Optional[float] = Field(default=None, description="average frame rate")
    frame_count: int = Field(description="frames in the result: every decoded frame, or those of the range")
    duration_s: Optional[float] = Field(default=None, description="the whole video's duration, seconds")
    rotation: int = Field(default=0, description="clockwise rotation applied from the file's metadata, degrees")
    range: Optional[VideoRange] = Field(
        default=None,
        description="the frames processed when a range was asked for (frame indices and times stay the whole video's); "
        "null: the whole video",
    )


class Frame(BaseModel):
    frame_index: int
    time_s: float = Field(description="presentation time from the stream start, seconds")
    people: list[Person]


class TrackSummary(BaseModel):
    track_id: int
    first_frame: int
    last_frame: int
    num_frames: int = Field(description="frames in which the track has a detection")


class VideoResult(BaseModel):
    schema_version: str = SCHEMA_VERSION
    video: VideoMeta
    frames: list[Frame]
    tracks: list[TrackSummary]
    models: dict[str, str] = Field(default_factory=dict)
