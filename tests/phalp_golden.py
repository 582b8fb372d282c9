"""PHALP's golden scenario read back into our types (shared by the tracking and precision tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.models.phalp.config import PhalpConfig
from pipeline.tracking import PersonObservation


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz, read once (indexing an NpzFile decompresses the array each time)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def golden_config(folder: Path) -> PhalpConfig:
    """The tracker settings the reference ran with (``config_used.json``)."""
    used = json.loads((folder / "config_used.json").read_text())["config"]
    p = used["phalp"]
    return PhalpConfig(
        alpha=p["alpha"], low_th_c=p["low_th_c"], hungarian_th=p["hungarian_th"], track_history=p["track_history"],
        max_age_track=p["max_age_track"], n_init=p["n_init"], past_lookback=p["past_lookback"],
        small_w=p["small_w"], small_h=p["small_h"], render_res=used["render"]["res"],
        focal_length=float(used["EXTRA"]["FOCAL_LENGTH"]), expand_bbox_shape=tuple(used["expand_bbox_shape"]),
    )  # fmt: skip


def golden_scenario(folder: Path) -> list[tuple[int, list[PersonObservation], tuple[int, int], np.ndarray]]:
    """Per frame: (frame index, [PersonObservation], image size, rows of detections.npz).

    UV maps are rebuilt from the packed visibility and the texture table; each must sum to the
    fixture's checksum, so a misread fixture fails here rather than as a tracking difference.
    """
    meta = json.loads((folder / "detections.json").read_text())
    d = read_npz(folder / "detections.npz")
    size = tuple(meta["image_size_hw"])
    uv_hw = d["uv_textures"].shape[-2:]  # the UV atlas size, as stored
    frames = []
    for fr in meta["frames"]:
        t = fr["frame"]
        rows = np.nonzero(d["frame"] == t)[0]
        rows = rows[np.argsort(d["det_index"][rows])]
        raw_by_det = {x["det_index"]: x["raw_index"] for x in fr["detections"]}
        people = []
        for i in rows:
            vis = np.unpackbits(d["uv_visible_packed"][i], axis=-1)[:, : uv_hw[1]].astype(bool)
            uv = np.empty((4, *uv_hw), dtype=np.float32)
            uv[:3] = np.where(vis, d["uv_textures"][d["uv_tex_id"][i]], 0)
            uv[3] = np.where(vis, 1, -1)
            checksum = float(uv.astype(np.float64).sum())
            if not np.isclose(checksum, float(d["uv_checksum"][i]), rtol=1e-12, atol=0):
                raise AssertionError(f"frame {t}: UV map of row {i} sums to {checksum}, fixture says {d['uv_checksum'][i]}")
            x, y, w, h = (np.float64(v) for v in d["bbox"][i])
            people.append(
                PersonObservation(
                    bbox=np.array([x, y, x + w, y + h]),
                    score=float(d["conf"][i]),
                    global_orient=d["smpl_global_orient"][i],
                    body_pose=d["smpl_body_pose"][i],
                    betas=d["smpl_betas"][i],
                    pred_cam=d["camera_bbox"][i],
                    uv=uv,
                    appearance=d["appe"][i],
                    joints_3d=d["joints_3d"][i][:-1],  # the stored extra zero joint is not an HMR2 output
                    crop_center=d["center"][i].astype(np.float64),
                    crop_size=float(np.max(d["scale"][i])),
                    extra=raw_by_det[int(d["det_index"][i])],
                )
            )
        frames.append((t, people, size, rows))
    if not frames:
        raise AssertionError("no frames in detections.json")
    if sum(len(f[1]) for f in frames) != meta["n_detections"] or meta["n_detections"] != len(d["frame"]):
        raise AssertionError("detections.json and detections.npz disagree on the number of detections")
    return frames
