"""The compact binary form of a video result: one NPZ of flat arrays, one row per person and frame.

`pipeline.video.results` writes these files chunk by chunk; `video_result_arrays` gives the same
arrays from a result's JSON document (for a client that holds only the JSON, and as the
independent statement of the layout the streamed writer is tested against).

JSON suits a web backend reading a few people; analysis code wants arrays. Rows are ordered as in
the JSON (frame by frame, people in detection order), so row ``r`` of every per-person array
describes the same person. Only numbers and text are stored: ``np.load(..., allow_pickle=False)``
reads it. Missing track ids are -1, missing scores NaN.

Arrays (P people rows, F frames):

* ``frame_index`` (P,) int64, ``person_index`` (P,) int64, ``track_id`` (P,) int64, ``score`` (P,)
* ``bbox`` (P, 4) xyxy pixels; ``global_orient`` (P, 3, 3); ``body_pose`` (P, 23, 3, 3); ``betas`` (P, 10)
* ``pred_cam``, ``t_crop``, ``t_full`` (P, 3); ``focal_length_crop``, ``focal_length_full`` (P,)
* ``keypoints_2d`` (P, 44, 2) pixels; ``keypoints_3d`` (P, 44, 3) metres
* ``vertices`` (P, 6890, 3) metres, only in ``result-vertices.npz`` (jobs with vertices)
* ``frames_index``, ``frames_time_s`` (F,): every decoded frame, with or without people
* ``meta``: 0-d text, the JSON of everything else (schema version, video, tracks, models)
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

_PERSON_KEYS = (
    ("bbox", lambda p: p["bbox"], (4,)),
    ("global_orient", lambda p: p["smpl"]["global_orient"], (3, 3)),
    ("body_pose", lambda p: p["smpl"]["body_pose"], (23, 3, 3)),
    ("betas", lambda p: p["smpl"]["betas"], (10,)),
    ("pred_cam", lambda p: p["camera"]["pred_cam"], (3,)),
    ("t_crop", lambda p: p["camera"]["t_crop"], (3,)),
    ("t_full", lambda p: p["camera"]["t_full"], (3,)),
    ("focal_length_crop", lambda p: p["camera"]["focal_length_crop"], ()),
    ("focal_length_full", lambda p: p["camera"]["focal_length_full"], ()),
    ("keypoints_2d", lambda p: p["keypoints_2d"], (44, 2)),
    ("keypoints_3d", lambda p: p["keypoints_3d"], (44, 3)),
)


def video_result_arrays(document: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a `VideoResult` document (as JSON-ready dict); see the module docstring."""
    frames = document["frames"]
    people = [(f, p) for f in frames for p in f["people"]]
    arrays: dict[str, np.ndarray] = {
        "frame_index": np.array([f["frame_index"] for f, _ in people], np.int64),
        "person_index": np.array([p["person_index"] for _, p in people], np.int64),
        "track_id": np.array([-1 if p.get("track_id") is None else p["track_id"] for _, p in people], np.int64),
        "score": np.array([np.nan if p.get("score") is None else p["score"] for _, p in people], np.float32),
        "frames_index": np.array([f["frame_index"] for f in frames], np.int64),
        "frames_time_s": np.array([f["time_s"] for f in frames], np.float64),
    }
    for name, get, shape in _PERSON_KEYS:
        arrays[name] = np.asarray([get(p) for _, p in people], np.float32).reshape(len(people), *shape)
    if people and all(p.get("vertices") is not None for _, p in people):
        arrays["vertices"] = np.asarray([p["vertices"] for _, p in people], np.float32).reshape(len(people), -1, 3)
    meta = {k: v for k, v in document.items() if k != "frames"}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays
