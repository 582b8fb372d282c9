"""PHALP's results pickle: the per-frame dictionary 4D-Humans' ``track.py`` saves with joblib.

Tools written for PHALP's output (LART, PHALP's post-processing, users' own scripts) read
``results/demo_<video>.pkl``: one entry per frame, keyed by the frame's image name, holding per
frame lists with one item per confirmed track alive in that frame (the order of ``tid``). PHALP
lists a track also in the frames it is not detected in, until it is deleted (``max_age_track``
frames without a detection), with the data of its last detection and ``tracked_time`` = frames
since; ``tracked_ids`` / ``tracked_bbox`` hold only the tracks detected in the frame.

This module rebuilds that dictionary from a result: the per-detection vectors PHALP stores
(``pose``, ``loca``, ``camera``, ``2d_joints``, ``3d_joints``) come from the tracker's own
`pipeline.tracking.observation.build_detection`, fed the result's SMPL parameters, crop camera,
3D keypoints and box. What a result does not hold is written as documented placeholders of
PHALP's type and shape: ``appe`` (the appearance embedding: NaN), ``mask`` (the detection box
as a COCO RLE, not the segmentation). Every key, type, dtype and shape: docs/exports.md.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..models.phalp.config import PhalpConfig
from ..tracking.observation import NUM_JOINTS_3D, PersonObservation, build_detection, expand_to_aspect
from .source import ResultReader, frame_people

APPE_DIM = 4096  # PHALP's appearance embedding (HMAR autoencoder of the UV texture)
# The values of each track's item in a frame's lists, in PHALP's order (``history_keys``).
TRACK_KEYS = (
    "appe", "loca", "pose", "center", "scale", "size", "img_path", "img_name", "class_name", "conf",
    "annotations", "smpl", "camera", "camera_bbox", "3d_joints", "2d_joints", "mask", "extra_data",
)  # fmt: skip


def frame_name(frame_index: int) -> str:
    """A frame's key: the image name PHALP's frame extraction gives it (1-based, 6 digits)."""
    return f"{int(frame_index) + 1:06d}.jpg"


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE text of run lengths (pycocotools' ``rleToString``): each count,
    less the one two before it from the third on, in 5-bit groups, 48 added to each character."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(c + (0x20 if more else 0) + 48))
    return "".join(out)


def box_rle(bbox: np.ndarray, height: int, width: int) -> dict[str, Any]:
    """The pixels whose centres lie in an x1, y1, x2, y2 box as a COCO RLE (column-major runs,
    first a run of zeros), as ``pycocotools.mask.encode`` writes a mask."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    c0, c1 = (int(np.clip(np.floor(v + 0.5), 0, width)) for v in (x1, x2))
    r0, r1 = (int(np.clip(np.floor(v + 0.5), 0, height)) for v in (y1, y2))
    if c1 <= c0 or r1 <= r0:
        counts = [height * width]
    else:
        rows = r1 - r0
        counts = [c0 * height + r0]
        for _ in range(c1 - c0 - 1):
            counts += [rows, height - rows]
        counts += [rows, (height - r1) + (width - c1) * height]
    return {"size": [int(height), int(width)], "counts": rle_string(counts)}


def detection_item(
    person: Mapping[str, Any], frame: Mapping[str, Any], *, image_size: tuple[int, int], config: PhalpConfig, appe: np.ndarray
) -> dict[str, Any]:
    """One detection as PHALP's per-track item (the `TRACK_KEYS`), plus its ``bbox``."""
    height, width = image_size
    smpl, cam = person["smpl"], person["camera"]
    bbox = np.asarray(person["bbox"], np.float64).reshape(4)
    score = person.get("score")
    observation = PersonObservation(
        bbox=bbox,
        score=1.0 if score is None else float(score),
        global_orient=np.asarray(smpl["global_orient"], np.float32).reshape(1, 3, 3),
        body_pose=np.asarray(smpl["body_pose"], np.float32).reshape(23, 3, 3),
        betas=np.asarray(smpl["betas"], np.float32).reshape(10),
        pred_cam=np.asarray(cam["pred_cam"], np.float32).reshape(3),
        joints_3d=np.asarray(person["keypoints_3d"], np.float32).reshape(NUM_JOINTS_3D, 3),
    )
    det = build_detection(observation, time=int(frame["frame_index"]), index=int(person.get("person_index", 0)), image_size=image_size, config=config)
    center, size = expand_to_aspect(bbox, config.expand_bbox_shape)
    joints_2d = det.loca[: 2 * (NUM_JOINTS_3D + 1)]
    camera = det.loca[2 * (NUM_JOINTS_3D + 1) : 2 * (NUM_JOINTS_3D + 1) + 3]
    joints_3d = np.zeros((NUM_JOINTS_3D + 1, 3), np.float32)
    joints_3d[:NUM_JOINTS_3D] = observation.joints_3d
    name = frame_name(frame["frame_index"])
    return {
        "bbox": det.bbox_tlwh.astype(np.float32),
        "appe": appe,
        "loca": det.loca,
        "pose": det.pose,
        "center": center.astype(np.float32),
        "scale": float(np.max(size)) / max(height, width),
        "size": [int(height), int(width)],
        "img_path": name,
        "img_name": name,
        "class_name": np.int64(0),
        "conf": det.conf,
        "annotations": [],
        "smpl": {
            "global_orient": observation.global_orient,
            "body_pose": observation.body_pose,
            "betas": observation.betas,
        },
        "camera": camera.copy(),
        "camera_bbox": observation.pred_cam,
        "3d_joints": joints_3d,
        "2d_joints": joints_2d.copy(),
        "mask": [box_rle(bbox, height, width)],
        "extra_data": int(person.get("person_index", 0)),
    }


def _image_size(reader: ResultReader) -> tuple[int, int]:
    video = reader.meta.get("video") or {}
    try:
        return int(video["height"]), int(video["width"])
    except (KeyError, TypeError, ValueError):
        raise InputError("result_unreadable", "expected the result's video width and height before its frames, found none") from None


def phalp_results(
    reader: ResultReader,
    *,
    track: int | None = None,
    include_unconfirmed: bool = False,
    config: PhalpConfig | None = None,
    seen: set[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """The dictionary PHALP's ``track()`` dumps, for every frame of the result (see the module
    docstring; ``seen`` collects the track ids listed). Held in memory whole, as PHALP does."""
    cfg = config or PhalpConfig()
    appe = np.full(APPE_DIM, np.nan, np.float32)  # one placeholder array, shared by every item
    out: dict[str, dict[str, Any]] = {}
    alive: dict[int, tuple[dict[str, Any], int]] = {}  # id -> (last detection's item, its frame position)
    image_size: tuple[int, int] | None = None
    for t, (frame, wanted) in enumerate(frame_people(reader, track=track, include_unconfirmed=include_unconfirmed)):
        image_size = image_size or _image_size(reader)
        for person, key in wanted:
            try:
                alive[key] = (detection_item(person, frame, image_size=image_size, config=cfg, appe=appe), t)
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError("result_unreadable", f"frame {frame.get('frame_index')}: a person without box, SMPL parameters, camera or keypoints: {exc}") from exc
        name = frame_name(frame["frame_index"])
        entry: dict[str, Any] = {"time": t, "shot": 0, "frame_path": name}
        entry.update({k: [] for k in ("tracked_ids", "tracked_bbox", "tid", "bbox", "tracked_time", *TRACK_KEYS)})
        confirmed = sorted(k for k in alive if k >= 0)
        for key in confirmed + sorted((k for k in alive if k < 0), reverse=True):
            item, last = alive[key]
            since = t - last
            if since > (cfg.max_age_track if key >= 0 else 0):  # deleted; an unconfirmed detection lives one frame
                del alive[key]
                continue
            entry["tid"].append(key)
            entry["bbox"].append(item["bbox"])
            entry["tracked_time"].append(since)
            for k in TRACK_KEYS:
                entry[k].append(item[k])
            if since == 0:
                entry["tracked_ids"].append(key)
                entry["tracked_bbox"].append(item["bbox"])
            if seen is not None:
                seen.add(key)
        out[name] = entry
    return out


def phalp_pickle(results: dict[str, dict[str, Any]]) -> bytes:
    """The dictionary as ``track.py`` writes it: ``joblib.dump(..., compress=3)``."""
    import joblib

    buf = io.BytesIO()
    joblib.dump(results, buf, compress=3)
    return buf.getvalue()
