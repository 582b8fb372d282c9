"""Checkpoint conversion for PHALP's published weight files, as pure functions plus strict loads.

* ``hmar_v2_weights.pth``: ``{'model': {'HMAR.<module key>': tensor}}`` with HMAR's SMPL head
  spelled ``smplx_head``. Tracking needs only the encoder half of ``encoding_head``.
* ``pose_predictor_40006.ckpt`` (cached as ``weights/pose_predictor.pth``): a Lightning
  checkpoint whose ``state_dict`` holds ``encoder.<lart_transformer key>``.

Files are unpickled with `pipeline.safe_pickle.torch_load`: tensors are rebuilt through an
allow-list of torch functions and every other object named in the file (omegaconf or Lightning
classes in a checkpoint's ``hyper_parameters``) becomes an inert record; nothing named in a file
is imported or run.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml

from ...errors import WeightsError
from .config import PosePredictorConfig

# ---------------------------------------------------------------------------------------------
# HMAR -> PhalpAppearanceEncoder

HMAR_ENCODER_PREFIX = "encoding_head."
# Encoder parameters of ``EncodingHead`` ("4c"); everything else in the file is known and unused.
HMAR_ENCODER_KEYS = tuple(
    f"{layer}.{p}" for layer in ("conv1x", "conv2", "conv3", "conv4", "conv5", "conv5_1") for p in ("weight", "bias")
)
# Groups of HMAR the 4D-Humans tracking path never runs: the auto-encoder's decoder, and the
# ResNet backbone, texture head and SMPL head that HMR2.0 and the texture sampler replace.
HMAR_IGNORED_PREFIXES = (
    "encoding_head.t_",
    "backbone.",
    "texture_head.",
    "smplx_head.",
    "smpl_head.",
)
# Substrings PHALP's ``HMAR.load_weights`` keeps; keys with none of them were never loaded by the
# reference either, so they are ignored here too.
HMAR_REFERENCE_FILTER = ("encoding_head", "texture_head", "backbone", "smplx_head")


def _strip_hmar_prefix(key: str) -> str:
    # The reference drops the first 5 characters ("HMAR.").
    return key[5:] if key.startswith("HMAR.") else key


def convert_hmar_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HMAR file keys -> `PhalpAppearanceEncoder` keys.

    Raises `WeightsError` naming missing encoder keys and any unexpected ``encoding_head`` key.
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file_key, value in original.items():
        if not any(s in file_key for s in HMAR_REFERENCE_FILTER):
            continue
        key = _strip_hmar_prefix(file_key)
        if key.startswith(HMAR_IGNORED_PREFIXES):
            continue
        if key.startswith(HMAR_ENCODER_PREFIX) and key[len(HMAR_ENCODER_PREFIX):] in HMAR_ENCODER_KEYS:
            out[key[len(HMAR_ENCODER_PREFIX):]] = value
        else:
            unexpected.append(file_key)
    missing = [k for k in HMAR_ENCODER_KEYS if k not in out]
    if missing or unexpected:
        raise WeightsError(
            "hmar_weights_keys",
            f"HMAR weights do not match the appearance encoder: missing {missing}, unexpected {unexpected}",
        )
    return out


# ---------------------------------------------------------------------------------------------
# Lightning checkpoint -> PhalpPoseTransformer

POSE_PREDICTOR_PREFIX = "encoder."
# lart_transformer parts that predict_next never runs: the extra 16-layer ``transformer`` stack,
# the sinusoid tables, the class token (prepended and dropped again) and the action head.
POSE_PREDICTOR_IGNORED_PREFIXES = ("transformer.", "action_head_ava.")
POSE_PREDICTOR_IGNORED_KEYS = ("pos_embedding", "pe", "class_token")


def convert_pose_predictor_state_dict(original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint ``state_dict`` -> `PhalpPoseTransformer` keys.

    Removes only the leading ``encoder.``. The reference removes every occurrence of the
    substring, which turns ``encoder.pose_shape_encoder.*`` into keys matching nothing; its
    non-strict load then leaves that layer at a random init. Here it is loaded.
    """
    out: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for file_key, value in original.items():
        if not file_key.startswith(POSE_PREDICTOR_PREFIX):
            foreign.append(file_key)
            continue
        key = file_key[len(POSE_PREDICTOR_PREFIX):]
        if key in POSE_PREDICTOR_IGNORED_KEYS or key.startswith(POSE_PREDICTOR_IGNORED_PREFIXES):
            continue
        out[key] = value
    if foreign:
        raise WeightsError(
            "pose_predictor_keys", f"pose predictor checkpoint has keys outside 'encoder.': {foreign[:10]}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Strict loading


def read_torch_file(path: str | Path) -> Any:
    """Unpickle a torch file safely (see the module docstring); ``.gz`` files are decompressed."""
    from ...safe_pickle import torch_load

    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return torch_load(io.BytesIO(fh.read()), map_location="cpu")
        return torch_load(path, map_location="cpu")
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError("weights_corrupt", f"{path} is not a readable torch file: {exc}") from exc


def hmar_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """``hmar_v2_weights.pth`` -> encoder state dict (keys converted)."""
    data = read_torch_file(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, Mapping):
        raise WeightsError("hmar_weights_keys", f"{path}: expected a dict with a 'model' state dict")
    return convert_hmar_state_dict(model)


def pose_predictor_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Lightning checkpoint -> `PhalpPoseTransformer` state dict (keys converted)."""
    data = read_torch_file(path)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, Mapping):
        raise WeightsError("pose_predictor_keys", f"{path}: expected a checkpoint dict with 'state_dict'")
    return convert_pose_predictor_state_dict(state)


def read_mean_std(path: str | Path) -> np.ndarray:
    """``mean_std.npy``: (2, 1, K) float array, read without pickle."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise WeightsError("weights_corrupt", f"{path} is not a readable .npy array: {exc}") from exc
    if arr.ndim < 2 or arr.shape[0] != 2:
        raise WeightsError("weights_corrupt", f"{path}: expected shape (2, 1, K), got {arr.shape}")
    return arr


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
