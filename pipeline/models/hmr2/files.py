"""HMR2.0 files in 4D-Humans' cache layout (``~/.cache/4DHumans``) and where they are published."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import yaml

from ...weights import Download, WeightFile

CHECKPOINT = "logs/train/multiruns/hmr2/0/checkpoints/epoch=35-step=1000000.ckpt"
MODEL_CONFIG = "logs/train/multiruns/hmr2/0/model_config.yaml"
MEAN_PARAMS = "data/smpl_mean_params.npz"
JOINT_REGRESSOR = "data/SMPL_to_J19.pkl"
SMPL_NEUTRAL = "data/smpl/SMPL_NEUTRAL.pkl"
SMPL_ORIGINAL = "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"

# 4D-Humans' data archive: checkpoint, config, mean parameters, extra joint regressor. The
# address has moved between hosts; the current one first, then the earlier ones.
HMR2_DATA = Download(
    name="hmr2_data.tar.gz",
    root="hmr2",
    target="hmr2_data.tar.gz",
    urls=(
        "https://www.cs.utexas.edu/~pavlakos/4dhumans/hmr2_data.tar.gz",
        "https://people.eecs.berkeley.edu/~jathushan/projects/4dhumans/hmr2_data.tar.gz",
        "https://people.eecs.berkeley.edu/~shubham-goel/projects/4DHumans/hmr2_data.tar.gz",
    ),
    extract=True,
)

SMPL_HOW_TO = (
    "SMPL is licensed and never downloaded: register at https://smpl.is.tue.mpg.de, download "
    f"'SMPL for Python' and put the neutral model ({SMPL_ORIGINAL}, or 4D-Humans' converted "
    f"SMPL_NEUTRAL.pkl) in the 4D-Humans cache under data/ (either name), or keep PHALP's copy in "
    "its cache (3D/models/smpl/SMPL_NEUTRAL.pkl)."
)


def _check_zip_checkpoint(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        if not any(n.endswith("data.pkl") for n in zf.namelist()):
            raise ValueError("not a torch.save archive (no data.pkl)")


def _check_yaml(path: Path) -> None:
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict) or "MODEL" not in cfg:
        raise ValueError("no MODEL section")


def _check_mean_params(path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        missing = {"pose", "shape", "cam"} - set(z.files)
        if missing:
            raise ValueError(f"missing arrays {sorted(missing)}")


def _check_smpl(path: Path) -> None:
    from ..smpl import read_smpl_pickle

    read_smpl_pickle(path)


def _check_regressor(path: Path) -> None:
    from ..smpl import read_joint_regressor

    read_joint_regressor(path)


FILES: tuple[WeightFile, ...] = (
    WeightFile(
        key="hmr2.checkpoint",
        root="hmr2",
        path=CHECKPOINT,
        description="HMR2.0b Lightning checkpoint",
        download=HMR2_DATA,
        min_bytes=1 << 20,
        check=_check_zip_checkpoint,
    ),
    WeightFile(
        key="hmr2.model_config",
        root="hmr2",
        path=MODEL_CONFIG,
        description="HMR2.0b model_config.yaml",
        download=HMR2_DATA,
        check=_check_yaml,
    ),
    WeightFile(
        key="hmr2.mean_params",
        root="hmr2",
        path=MEAN_PARAMS,
        description="SMPL mean pose/shape/camera",
        download=HMR2_DATA,
        check=_check_mean_params,
    ),
    WeightFile(
        key="hmr2.joint_regressor_extra",
        root="hmr2",
        path=JOINT_REGRESSOR,
        description="SMPL -> 19 extra joints regressor",
        download=HMR2_DATA,
        check=_check_regressor,
    ),
    WeightFile(
        key="smpl.neutral",
        root="hmr2",
        path=SMPL_NEUTRAL,
        description="SMPL neutral body model (licensed)",
        alternatives=(("hmr2", f"data/{SMPL_ORIGINAL}"), ("phalp", "3D/models/smpl/SMPL_NEUTRAL.pkl")),
        min_bytes=1 << 20,
        how_to_get=SMPL_HOW_TO,
        check=_check_smpl,
    ),
)
