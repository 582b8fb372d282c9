"""Build PHALP's tracking networks from the files in PHALP's cache layout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch

from ...errors import WeightsError
from ...runtime import resolve_device
from ...weights import CacheRoots, ensure
from ..checkpoint import assert_materialised, load_strict
from .config import AppearanceEncoderConfig
from .convert import hmar_state_from_file, pose_predictor_state_from_file, read_mean_std, read_pose_predictor_config
from .encoder import PhalpAppearanceEncoder
from .predictor import PhalpPosePredictor

logger = logging.getLogger(__name__)


def appearance_config_from_state(state: Mapping[str, torch.Tensor]):
    """Encoder widths read from the weights (the tiny factory writes narrower ones)."""
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
