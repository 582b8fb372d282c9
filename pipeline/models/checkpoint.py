"""Strict state-dict loading shared by every model: all keys, exact shapes, nothing extra."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import WeightsError


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)``, with every mismatch named in one `WeightsError`.

    Shapes are compared first, so a wrong checkpoint fails with its keys listed rather than
    PyTorch's first size error. ``assign`` adopts the tensors instead of copying them (for a
    model built on the meta device, so no random init is paid for): each tensor is first cast
    to the dtype the model declares for it (adopting would keep the file's dtype), and any
    parameter or buffer the state did not provide and that is still on meta is an error.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
        raise WeightsError(
            "checkpoint_mismatch",
            f"{source} does not fit the model: " + "; ".join(parts),
            details={"missing": missing[:50], "unexpected": unexpected[:50], "mismatched": mismatched[:50]},
        )
    if not assign:
        model.load_state_dict(dict(state), strict=True)
        return
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    assert_materialised(model, source=source)


def assert_materialised(model: nn.Module, *, source: str) -> None:
    """Raise if a parameter or buffer is still on the meta device (a loader forgot to fill it,
    e.g. a non-persistent buffer or a constant computed in ``__init__``)."""
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} from {source}: tensors left on the meta device: {left[:10]}")
