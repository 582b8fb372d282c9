"""glTF 2.0 binary (GLB): the skinned SMPL mesh of a track and its animation.

Written with numpy, struct and json only. The file holds:

* the rest mesh of the track's mean betas (the user's SMPL template plus its shape blend
  shapes; pose-dependent correctives are not representable in glTF skinning and are left out),
  its triangles, and per vertex the four largest SMPL skinning weights, renormalised to sum 1;
* 24 joint nodes named and parented as SMPL's skeleton, at their rest offsets, with a skin
  whose inverse bind matrices undo each joint's rest position;
* one animation: every joint's rotation (quaternions) and the root's translation (the pelvis),
  keyed at the track's detections, sampler input = presentation time in seconds from the video
  start (so several tracks' files line up with each other and the video), LINEAR.

Units metres; axes glTF's: y up, x = the camera's right, z = towards the camera (a person
facing the camera faces +z). ``asset.extras`` says the same, with the track id and frame rate.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

import numpy as np

from .body import CAMERA_TO_Y_UP, JOINT_NAMES, BodyModel
from .motion import track_fps, track_motion
from .source import TrackArrays

logger = logging.getLogger(__name__)

_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENTS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_DTYPES = {_FLOAT: np.float32, _UBYTE: np.uint8, _USHORT: np.uint16, _UINT: np.uint32}
_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942


class _Buffer:
    """One binary buffer and the bufferViews / accessors that slice it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, values: np.ndarray, kind: str, component: int, *, target: int | None = None, bounds: bool = False) -> int:
        """Append ``values`` (rows of ``kind``) as one view and one accessor; the accessor's index."""
        arr = np.ascontiguousarray(values, dtype=_DTYPES[component]).reshape(-1, _COMPONENTS[kind])
        self.data += b"\0" * (-len(self.data) % 4)  # every view starts 4-byte aligned
        view: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.data), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        self.data += arr.tobytes()
        self.views.append(view)
        accessor: dict[str, Any] = {"bufferView": len(self.views) - 1, "componentType": component, "count": len(arr), "type": kind}
        if bounds:
            accessor["min"] = [v.item() for v in arr.min(axis=0)]
            accessor["max"] = [v.item() for v in arr.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def top4_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex the 4 most influential joints (largest first) and their weights, renormalised
    so the float32 weights sum to 1."""
    order = np.argsort(-weights, axis=1, kind="stable")[:, :4]
    w = np.take_along_axis(weights, order, axis=1)
    w = (w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
    w[:, 0] = np.float32(1.0) - w[:, 1:].sum(axis=1, dtype=np.float32)
    order[w == 0] = 0  # unused slots point at joint 0, as glTF asks of zero weights
    return order.astype(np.uint8), w


def _glb(document: dict[str, Any], binary: bytes) -> bytes:
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (
        struct.pack("<III", _GLB_MAGIC, 2, total)
        + struct.pack("<II", len(text), _JSON_CHUNK) + text
        + struct.pack("<II", len(binary), _BIN_CHUNK) + binary
    )  # fmt: skip


def glb_bytes(track: TrackArrays, body: BodyModel, *, video_fps: float | None, extras: dict[str, Any] | None = None) -> bytes:
    """One track as a GLB file (see the module docstring)."""
    fps = track_fps(video_fps, track)
    motion = track_motion(track, body, CAMERA_TO_Y_UP, uniform=False)
    times = motion.time_s.astype(np.float32)
    if len(times) > 1 and not np.all(np.diff(times) > 0):
        logger.warning("track %d: frame times not increasing; keyed at frame / fps instead", track.track_id)
        times = (motion.frame_index / fps).astype(np.float32)
    rest = body.joints(motion.betas)
    buf = _Buffer()
    faces = body.faces.astype(np.uint16 if body.faces.max() < 65535 else np.uint32)
    joints, weights = top4_weights(body.weights)
    attributes = {
        "POSITION": buf.add(body.vertices(motion.betas), "VEC3", _FLOAT, target=_ARRAY_BUFFER, bounds=True),
        "JOINTS_0": buf.add(joints, "VEC4", _UBYTE, target=_ARRAY_BUFFER),
        "WEIGHTS_0": buf.add(weights, "VEC4", _FLOAT, target=_ARRAY_BUFFER),
    }
    indices = buf.add(faces.reshape(-1), "SCALAR", _USHORT if faces.dtype == np.uint16 else _UINT, target=_ELEMENT_ARRAY_BUFFER)
    inverse_bind = np.tile(np.eye(4), (len(rest), 1, 1))
    inverse_bind[:, :3, 3] = -rest
    ibm = buf.add(np.transpose(inverse_bind, (0, 2, 1)), "MAT4", _FLOAT)  # column-major
    time_acc = buf.add(times, "SCALAR", _FLOAT, bounds=True)

    nodes: list[dict[str, Any]] = []
    children = body.children
    for j, name in enumerate(JOINT_NAMES):
        parent = body.parents[j]
        node: dict[str, Any] = {"name": name, "translation": (rest[j] - (rest[parent] if parent >= 0 else 0.0)).tolist()}
        if children[j]:
            node["children"] = children[j]
        nodes.append(node)
    nodes.append({"name": f"track_{track.track_id}_body", "mesh": 0, "skin": 0})

    samplers: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] = []
    for j in range(len(JOINT_NAMES)):
        samplers.append({"input": time_acc, "output": buf.add(motion.quats[:, j], "VEC4", _FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": j, "path": "rotation"}})
    samplers.append({"input": time_acc, "output": buf.add(motion.pelvis, "VEC3", _FLOAT), "interpolation": "LINEAR"})
    channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "translation"}})

    document = {
        "asset": {
            "version": "2.0",
            "generator": "pose-service",
            "extras": {
                "units": "metres",
                "axes": "y up; x = camera right, z = towards the camera (the camera frame turned 180 degrees about x)",
                "time": "seconds from the video start",
                "fps": fps,
                "track_id": track.track_id,
                "first_frame": int(motion.frame_index[0]),
                "last_frame": int(motion.frame_index[-1]),
                "betas": motion.betas.tolist(),
                "pose_correctives": "not included (linear blend skinning only)",
                **(extras or {}),
            },
        },
        "scene": 0,
        "scenes": [{"nodes": [len(nodes) - 1, 0]}],
        "nodes": nodes,
        "meshes": [{"name": "smpl", "primitives": [{"attributes": attributes, "indices": indices, "mode": 4}]}],
        "skins": [{"name": "smpl", "joints": list(range(len(JOINT_NAMES))), "inverseBindMatrices": ibm, "skeleton": 0}],
        "animations": [{"name": f"track_{track.track_id}", "samplers": samplers, "channels": channels}],
        "accessors": buf.accessors,
        "bufferViews": buf.views,
        "buffers": [{"byteLength": len(buf.data) + (-len(buf.data) % 4)}],
    }
    return _glb(document, bytes(buf.data))
