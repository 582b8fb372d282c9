"""Loading 4D-Humans' Lightning checkpoint into `HMR2`, strictly.

The checkpoint is read with `pipeline.safe_pickle.torch_load`: tensors are rebuilt, while the
omegaconf/Lightning objects in ``hyper_parameters`` and ``callbacks`` stay inert records (no
import of those packages, no code from the file is run). Only ``state_dict`` is used.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ...errors import WeightsError
from ...safe_pickle import torch_load

logger = logging.getLogger(__name__)

# Keys of the released checkpoint that inference does not use, dropped by name. Anything else
# that does not match the model is an error.
TRAINING_ONLY_PREFIXES = ("discriminator.",)  # adversarial pose prior
TRAINING_ONLY_KEYS = ("initialized",)  # ActNorm initialisation flag


def read_checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint file, as CPU tensors."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError("checkpoint_invalid", f"{path} is not a PyTorch checkpoint (expected a torch.save zip archive)")
    try:
        ckpt = torch_load(path, map_location="cpu")
    except Exception as exc:
        raise WeightsError("checkpoint_invalid", f"{path} cannot be read as a checkpoint: {exc}") from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise WeightsError("checkpoint_invalid", f"{path}: expected a Lightning checkpoint with a 'state_dict', got {type(ckpt).__name__}")
    state = dict(ckpt["state_dict"])
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError("checkpoint_invalid", f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return state


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> our module keys: identical names, minus the training-only entries."""
    return {
        k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES) and k not in TRAINING_ONLY_KEYS
    }


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with the mismatches spelled out in a `WeightsError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise WeightsError(
            "checkpoint_mismatch",
            f"{source} does not fit the model built from its config: " + "; ".join(parts),
            details={"missing": missing[:50], "unexpected": unexpected[:50], "shape_mismatch": shapes[:50]},
        )
    model.load_state_dict(state, strict=True)
