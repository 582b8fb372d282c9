"""The tracker's networks and the appearance step, loaded together from PHALP's cache layout
(one appearance encoder shared by both), for the video loop."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.models.phalp.appearance import AppearanceModel
from pipeline.models.phalp.files import ATLAS_KEYS, FILES, TRACKING_KEYS
from pipeline.models.phalp.loading import load_tracking_models, load_tracking_models_from_paths
from pipeline.models.phalp.texture import PhalpTextureSampler
from pipeline.models.smpl import read_smpl_pickle
from pipeline.runtime import resolve_device
from pipeline.tracking.tracker import TrackerModels
from pipeline.weights import CacheRoots, catalog, ensure


def tracker_models_from_cache(
    roots: CacheRoots, *, device: str | torch.device | None = None, download: bool = True
) -> TrackerModels:
    """The networks `pipeline.tracking.Tracker` runs, from PHALP's cache layout."""
    return TrackerModels(*load_tracking_models(roots, device=device, download=download))


def load_appearance_and_tracking(
    roots: CacheRoots, *, device: str | torch.device | None = None, download: bool = True
) -> tuple[AppearanceModel, TrackerModels]:
    """The appearance step and the tracker's networks sharing one encoder, for a video runner."""
    files = [f for f in FILES if f.key in ATLAS_KEYS + TRACKING_KEYS]
    smpl = [f for f in catalog(["hmr2"]) if f.key == "smpl.neutral"]
    paths = ensure(files + smpl, roots, download=download)
    pose_predictor, encoder = load_tracking_models_from_paths(paths, device=device)
    faces = read_smpl_pickle(paths["smpl.neutral"])["f"]
    sampler = PhalpTextureSampler(np.load(paths["phalp.bmap"]), np.load(paths["phalp.fmap"]), faces)
    appearance = AppearanceModel(sampler.to(resolve_device(device)), encoder)
    return appearance, TrackerModels(pose_predictor, encoder)
