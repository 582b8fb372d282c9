"""Reading ViTDet's detectron2 model-zoo pickle (the shared reader, with ViTDet's error code for
a file of another layout). Names map 1:1 to our parameters; loading is strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detection import model_zoo
from ..detection.model_zoo import to_state_dict

__all__ = ["read_model_zoo", "to_state_dict"]


def read_model_zoo(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: ndarray}`` from a detectron2 model-zoo ``.pkl``; `WeightsError` otherwise."""
    return model_zoo.read_model_zoo(path, layout_code="weights_not_vitdet")
