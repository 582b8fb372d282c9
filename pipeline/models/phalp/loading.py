"""Build PHALP's tracking networks from the files in PHALP's cache layout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
import yaml

from ...errors import WeightsError
from ...runtime import resolve_device
from ...tracking.tracker import TrackerModels
from ...weights import CacheRoots, ensure
from .config import PosePredictorConfig
from ..checkpoint import assert_materialised, load_strict
from .convert import hmar_state_from_file, pose_predictor_state_from_file, read_mean_std
from .encoder import PhalpAppearanceEncoder
from .predictor import PhalpPosePredictor

if TYPE_CHECKING:
    from .appearance import AppearanceModel

logger = logging.getLogger(__name__)


def read_pose_predictor_config(path: str | Path) -> PosePredictorConfig:
    """The pose predictor's yaml (safe YAML: data only)."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise WeightsError("pose_predictor_config", f"{path} is not readable YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise WeightsError("pose_predictor_config", f"{path}: expected a mapping, got {type(data).__name__}")
    return PosePredictorConfig.from_yaml_dict(data, source=str(path))


def appearance_config_from_state(state: Mapping[str, torch.Tensor]):
    """Encoder widths read from the weights (the tiny factory writes narrower ones)."""
    from .config import AppearanceEncoderConfig

    layers = ("conv1x", "conv2", "conv3", "conv4", "conv5", "conv5_1")
    channels = tuple(int(state[f"{n}.weight"].shape[0]) for n in layers)
    return AppearanceEncoderConfig(in_channels=int(state["conv1x.weight"].shape[1]), channels=channels)  # type: ignore[arg-type]


def load_tracking_models_from_paths(
    paths: Mapping[str, Path], *, device: str | torch.device | None = None
) -> tuple[PhalpPosePredictor, PhalpAppearanceEncoder]:
    """Pose predictor and appearance encoder from explicit file paths (keys of `files.FILES`)."""
    dev = resolve_device(device)
    config = read_pose_predictor_config(paths["phalp.pose_predictor_config"])
    # Built on the meta device and filled by adoption: no random init that the files overwrite.
    with torch.device("meta"):
        predictor = PhalpPosePredictor(config)
    load_strict(predictor.encoder, pose_predictor_state_from_file(paths["phalp.pose_predictor"]),
                source=str(paths["phalp.pose_predictor"]), assign=True)
    try:
        predictor.set_mean_std(read_mean_std(paths["phalp.mean_std"]))
    except ValueError as exc:
        raise WeightsError("weights_corrupt", f"{paths['phalp.mean_std']}: {exc}") from exc
    assert_materialised(predictor, source=str(paths["phalp.pose_predictor"]))
    enc_state = hmar_state_from_file(paths["phalp.hmar_weights"])
    with torch.device("meta"):
        encoder = PhalpAppearanceEncoder(appearance_config_from_state(enc_state))
    load_strict(encoder, enc_state, source=str(paths["phalp.hmar_weights"]), assign=True)
    return predictor.to(dev).eval(), encoder.to(dev).eval()


def load_tracking_models(
    roots: CacheRoots, *, device: str | torch.device | None = None, download: bool = True
) -> tuple[PhalpPosePredictor, PhalpAppearanceEncoder]:
    """Find (download when missing and allowed) PHALP's tracking files, then build the networks."""
    from .files import FILES, TRACKING_KEYS

    files = [f for f in FILES if f.key in TRACKING_KEYS]
    paths = ensure(files, roots, download=download)
    return load_tracking_models_from_paths(paths, device=device)


def tracker_models_from_cache(
    roots: CacheRoots, *, device: str | torch.device | None = None, download: bool = True
) -> TrackerModels:
    """The networks `pipeline.tracking.Tracker` runs, from PHALP's cache layout."""
    return TrackerModels(*load_tracking_models(roots, device=device, download=download))


def load_appearance_and_tracking(
    roots: CacheRoots, *, device: str | torch.device | None = None, download: bool = True
) -> tuple[AppearanceModel, TrackerModels]:
    """The appearance step and the tracker's networks sharing one encoder, for a video runner."""
    import numpy as np

    from ...weights import catalog
    from ..smpl import read_smpl_pickle
    from .appearance import AppearanceModel
    from .files import ATLAS_KEYS, FILES, TRACKING_KEYS
    from .texture import PhalpTextureSampler

    files = [f for f in FILES if f.key in ATLAS_KEYS + TRACKING_KEYS]
    smpl = [f for f in catalog(["hmr2"]) if f.key == "smpl.neutral"]
    paths = ensure(files + smpl, roots, download=download)
    pose_predictor, encoder = load_tracking_models_from_paths(paths, device=device)
    faces = read_smpl_pickle(paths["smpl.neutral"])["f"]
    sampler = PhalpTextureSampler(np.load(paths["phalp.bmap"]), np.load(paths["phalp.fmap"]), faces)
    appearance = AppearanceModel(sampler.to(resolve_device(device)), encoder)
    return appearance, TrackerModels(pose_predictor, encoder)
