"""Per-frame meshes of a track: one OBJ file per detection, as 4D-Humans' ``demo.py --save_mesh``.

Each mesh is the posed SMPL body of the detection (`BodyModel.posed_vertices`, pose correctives
included) moved by the full-image camera translation ``t_full``, then turned, like the demo's
files (its renderer turns every saved mesh 180 degrees about x) and like our glTF and BVH, into
a y-up frame: x = the camera's right, y = up (the camera's -y), z = towards the camera (the
camera's -z). The camera sits at the origin, so the meshes of every person and frame of a video
share one scene. Units metres; faces are SMPL's triangles.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .body import CAMERA_TO_Y_UP, BodyModel
from .obj import obj_text
from .source import TrackArrays

POSE_BATCH = 64  # detections posed at once: bounds the memory of a long track


def frame_file(folder: str, frame_index: int) -> str:
    """The name of one frame's mesh in an OBJ export: ``<folder>/frame-<6-digit frame>.obj``."""
    return f"{folder}/frame-{int(frame_index):06d}.obj"


def track_meshes(track: TrackArrays, body: BodyModel) -> Iterator[tuple[int, np.ndarray]]:
    """(video frame, (6890, 3) float64 vertices in the y-up camera scene) per detection, in order."""
    for start in range(0, len(track), POSE_BATCH):
        part = slice(start, start + POSE_BATCH)
        posed = body.posed_vertices(track.rotations[part], track.betas[part]).astype(np.float64)
        scene = (posed + track.t_full[part, None, :]) @ CAMERA_TO_Y_UP.T
        for frame, vertices in zip(track.frame_index[part], scene):
            yield int(frame), vertices


def obj_files(track: TrackArrays, body: BodyModel, folder: str) -> Iterator[tuple[str, str]]:
    """(name in the zip, OBJ text) per detection of ``track``, under ``folder``."""
    for frame, vertices in track_meshes(track, body):
        header = (
            f"# track {track.track_id}, video frame {frame}: SMPL mesh, metres, y up "
            "(x = camera right, z = towards the camera; the camera at the origin)\n"
        )
        yield frame_file(folder, frame), header + obj_text(vertices, body.faces)
