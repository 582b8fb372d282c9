"""Reading detectron2 model-zoo pickles and loading them strictly into `VitDetModel`.

The published file is ``pickle.dump({"model": {name: ndarray}, "__author__": ...})``. Pickle
can run arbitrary code, so it is read with an unpickler that resolves only the few globals a
dict of numpy arrays needs (array/dtype reconstruction, ``OrderedDict``, ``_codecs.encode`` for
byte strings written by Python 3 at protocol 2); anything else is refused before it is
imported. Names map 1:1 to our parameters, as detectron2's checkpointer maps them for this file
(only a leading ``module.`` is stripped); unlike that checkpointer, a missing, unexpected or
mis-shaped key is an error.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import pickle
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np
import torch

from ...errors import WeightsError


def _numpy_core(name: str) -> Any:
    """``numpy._core.multiarray.<name>`` (numpy 2) or ``numpy.core.multiarray.<name>`` (numpy 1),
    without touching numpy 2's deprecated ``numpy.core`` alias."""
    try:
        module = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        module = importlib.import_module("numpy.core.multiarray")
    return getattr(module, name)


_ALLOWED: dict[tuple[str, str], Any] = {}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    if not _ALLOWED:
        reconstruct, scalar = _numpy_core("_reconstruct"), _numpy_core("scalar")
        for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
            _ALLOWED[(prefix, "_reconstruct")] = reconstruct
            _ALLOWED[(prefix, "scalar")] = scalar
        _ALLOWED[("numpy", "ndarray")] = np.ndarray
        _ALLOWED[("numpy", "dtype")] = np.dtype
        _ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
        _ALLOWED[("_codecs", "encode")] = codecs.encode
        for dtype_class in ("Float32DType", "Float64DType", "Int64DType", "Int32DType", "UInt8DType"):
            cls = getattr(np.dtypes, dtype_class, None) if hasattr(np, "dtypes") else None
            if cls is not None:
                _ALLOWED[("numpy.dtypes", dtype_class)] = cls
    return _ALLOWED


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction and plain containers; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a model-zoo checkpoint holds only numpy arrays"
            )
        return found


def read_pickle(fh: IO[bytes]) -> Any:
    """Unpickle with the restricted unpickler; ``latin1`` as detectron2 uses for Python 2 era files."""
    return _ArrayUnpickler(fh, encoding="latin1").load()


def read_model_zoo(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: float32 ndarray}`` from a detectron2 model-zoo ``.pkl``; `WeightsError` otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = read_pickle(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsError("weights_corrupt", f"{path} is not a readable detectron2 model-zoo pickle: {exc}") from exc
    return model_zoo_arrays(obj, source=str(path))


def model_zoo_arrays(obj: Any, *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Check the model-zoo layout and return its arrays with any ``module.`` prefix stripped."""
    if not isinstance(obj, dict) or "model" not in obj or "__author__" not in obj:
        keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(
            "weights_not_vitdet",
            f"{source}: expected a detectron2 model-zoo dict with 'model' and '__author__', got {keys}",
        )
    model = obj["model"]
    if not isinstance(model, Mapping):
        raise WeightsError("weights_not_vitdet", f"{source}: expected 'model' to be a dict, got {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(
                "weights_not_vitdet", f"{source}: expected {name!r} to be a numpy array, got {type(value).__name__}"
            )
        key = name[len("module.") :] if name.startswith("module.") else name
        arrays[key] = value
    return arrays


def to_state_dict(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """float32 tensors, names unchanged (the checkpoint already uses our module names)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
