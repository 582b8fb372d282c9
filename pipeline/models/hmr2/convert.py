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
