"""PHALP's files, at their places in PHALP's cache (``~/.cache/phalp``), described as data.

Paths and URLs are those of PHALP's ``cached_download_from_drive``. The SMPL body model PHALP
also keeps (``3D/models/smpl/SMPL_NEUTRAL.pkl``) is licensed: it is not listed here, the SMPL
entry of the HMR2 files accepts that location as an alternative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...weights import Download, WeightFile

OFFICIAL = "https://www.cs.utexas.edu/~pavlakos/phalp"

HMAR_WEIGHTS = "weights/hmar_v2_weights.pth"
POSE_PREDICTOR = "weights/pose_predictor.pth"
POSE_PREDICTOR_CONFIG = "weights/pose_predictor.yaml"
MEAN_STD = "3D/mean_std.npy"
BMAP = "3D/bmap_256.npy"
FMAP = "3D/fmap_256.npy"
SMPL_IN_PHALP_CACHE = "3D/models/smpl/SMPL_NEUTRAL.pkl"


def _check_hmar(path: Path) -> None:
    from .convert import hmar_state_from_file

    hmar_state_from_file(path)


def _check_pose_predictor(path: Path) -> None:
    from .convert import pose_predictor_state_from_file

    pose_predictor_state_from_file(path)


def _check_yaml(path: Path) -> None:
    from .convert import read_pose_predictor_config

    read_pose_predictor_config(path)


def _check_mean_std(path: Path) -> None:
    from .convert import read_mean_std

    read_mean_std(path)


def _check_atlas(path: Path) -> None:
    arr = np.load(path, allow_pickle=False, mmap_mode="r")
    if arr.ndim not in (2, 3) or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"expected a square UV atlas (S, S) or (S, S, 3), got shape {arr.shape}")


def _download(name: str, target: str, url_path: str) -> Download:
    return Download(name=name, root="phalp", target=target, urls=(f"{OFFICIAL}/{url_path}",))


FILES: tuple[WeightFile, ...] = (
    WeightFile(
        key="phalp.hmar_weights",
        root="phalp",
        path=HMAR_WEIGHTS,
        description="PHALP HMAR weights (the appearance encoder is read from them)",
        download=_download("hmar_v2_weights.pth", HMAR_WEIGHTS, "weights/hmar_v2_weights.pth"),
        min_bytes=1024,
        check=_check_hmar,
    ),
    WeightFile(
        key="phalp.pose_predictor",
        root="phalp",
        path=POSE_PREDICTOR,
        description="PHALP pose predictor checkpoint (pose_predictor_40006.ckpt)",
        download=_download("pose_predictor_40006.ckpt", POSE_PREDICTOR, "weights/pose_predictor_40006.ckpt"),
        min_bytes=1024,
        check=_check_pose_predictor,
    ),
    WeightFile(
        key="phalp.pose_predictor_config",
        root="phalp",
        path=POSE_PREDICTOR_CONFIG,
        description="PHALP pose predictor configuration (config_40006.yaml)",
        download=_download("config_40006.yaml", POSE_PREDICTOR_CONFIG, "weights/config_40006.yaml"),
        check=_check_yaml,
    ),
    WeightFile(
        key="phalp.mean_std",
        root="phalp",
        path=MEAN_STD,
        description="PHALP pose normalisation statistics",
        download=_download("mean_std.npy", MEAN_STD, "3D/mean_std.npy"),
        check=_check_mean_std,
    ),
    WeightFile(
        key="phalp.bmap",
        root="phalp",
        path=BMAP,
        description="SMPL UV atlas: barycentric coordinates per texel",
        download=_download("bmap_256.npy", BMAP, "bmap_256.npy"),
        check=_check_atlas,
    ),
    WeightFile(
        key="phalp.fmap",
        root="phalp",
        path=FMAP,
        description="SMPL UV atlas: face index per texel (-1 outside the atlas)",
        download=_download("fmap_256.npy", FMAP, "fmap_256.npy"),
        check=_check_atlas,
    ),
)

TRACKING_KEYS = ("phalp.hmar_weights", "phalp.pose_predictor", "phalp.pose_predictor_config", "phalp.mean_std")
ATLAS_KEYS = ("phalp.bmap", "phalp.fmap")
