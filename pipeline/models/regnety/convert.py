"""Loading detectron2's RegNetY model-zoo pickle strictly into `RegNetYModel`.

The file is ``{"model": {name: ndarray}, "__author__": ...}`` with exactly our state-dict names
(the shared reader, `pipeline.models.detection.model_zoo`). BatchNorm's ``num_batches_tracked``
may be stored as a float or an int array; it becomes our int64 buffer (unused in eval). The
pickle carries no configuration: the sizes are those of the preset whose shapes the file fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ...errors import WeightsError
from ..checkpoint import load_strict
from ..detection import model_zoo
from .config import PRESETS, RegNetYConfig
from .model import RegNetYModel


def read_model_zoo(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: ndarray}`` from a detectron2 model-zoo ``.pkl``; `WeightsError` otherwise."""
    return model_zoo.read_model_zoo(path, layout_code="weights_corrupt")


def _shapes(cfg: RegNetYConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = RegNetYModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def config_for(arrays: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> RegNetYConfig:
    """The preset (`regnety_4gf`, `regnety_tiny`) whose keys and shapes the arrays have exactly."""
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    for preset in PRESETS:
        cfg = preset()
        if _shapes(cfg) == shapes:
            return cfg
    names = ", ".join(p.__name__ for p in PRESETS)
    raise WeightsError(
        "checkpoint_mismatch",
        f"{source}: its {len(shapes)} keys and shapes fit none of the RegNetY Mask R-CNN models ({names})",
    )


def load_model(arrays: Mapping[str, np.ndarray], cfg: RegNetYConfig, *, source: str = "checkpoint") -> RegNetYModel:
    """A `RegNetYModel` of ``cfg`` holding the arrays; every key must be present and fit."""
    with torch.device("meta"):  # no throw-away random init
        model = RegNetYModel(cfg)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = model_zoo.to_state_dict(arrays, dtypes)
    load_strict(model, state, source=source, assign=True)
    return model
