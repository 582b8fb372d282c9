"""Reading detectron2 model-zoo pickles: ``{"model": {name: ndarray}, "__author__": ...}``.

The file is read with the project's restricted unpickler (`pipeline.safe_pickle`), so nothing
it names is imported or run; anything but numpy arrays under ``"model"`` is refused. Names map
1:1 to our parameters, as detectron2's checkpointer maps a model-zoo file (no renaming, no
matching heuristics; only a leading ``module.`` is stripped); the strict load that follows
(`pipeline.models.checkpoint.load_strict`) makes a missing, unexpected or mis-shaped key an
error where detectron2 only logs it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ...atomic import atomic_open
from ...errors import WeightsError
from ...safe_pickle import load_pickle


def read_model_zoo(path: str | Path, *, layout_code: str) -> dict[str, np.ndarray]:
    """``{name: ndarray}`` from a detectron2 model-zoo ``.pkl``; `WeightsError` otherwise
    (``weights_corrupt`` when unreadable, ``layout_code`` when it is not a model-zoo dict)."""
    path = Path(path)
    try:
        obj = load_pickle(path, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise WeightsError("weights_corrupt", f"{path} is not a readable detectron2 model-zoo pickle: {exc}") from exc
    return model_zoo_arrays(obj, source=str(path), layout_code=layout_code)


def model_zoo_arrays(obj: Any, *, source: str = "checkpoint", layout_code: str) -> dict[str, np.ndarray]:
    """Check the model-zoo layout and return its arrays with any ``module.`` prefix stripped."""
    if not isinstance(obj, dict) or "model" not in obj or "__author__" not in obj:
        keys = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            layout_code, f"{source}: expected a detectron2 model-zoo dict with 'model' and '__author__', got {keys}"
        )
    model = obj["model"]
    if not isinstance(model, Mapping):
        raise WeightsError(layout_code, f"{source}: expected 'model' to be a dict, got {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(
                layout_code,
                f"{source}: refusing {name!r}: a model-zoo checkpoint holds only numpy arrays, got {value!r}",
            )
        key = name[len("module.") :] if name.startswith("module.") else name
        arrays[key] = value
    return arrays


def to_state_dict(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """Tensors, names unchanged (the checkpoint already uses our module names): float32, or
    the dtype ``dtypes`` gives for a name (e.g. BatchNorm's int64 ``num_batches_tracked``,
    which model-zoo files store as float or int)."""
    dtypes = dtypes or {}
    return {
        k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")).to(dtypes.get(k, torch.float32))
        for k, v in arrays.items()
    }


def write_model_zoo(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``{name: ndarray}`` as a detectron2 model-zoo ``.pkl`` (the format `read_model_zoo`
    reads and detectron2's checkpointer loads without renaming), atomically; its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        pickle.dump({"model": dict(arrays), "__author__": "Detectron2 Model Zoo"}, fh, protocol=4)
    return path
