"""Reading the pickles the upstream projects publish, without running code from them.

The official files are pickles: SMPL's body model (Python 2, with chumpy and old scipy objects),
4D-Humans' Lightning checkpoint (with omegaconf objects in ``hyper_parameters``), PHALP's and
detectron2's weights. Plain ``pickle.load`` would import and call whatever a file names. Here
only an allow-list of constructors is resolved (numpy array reconstruction, torch tensor
rebuilding, a few builtins); the classes of packages we deliberately do not install (chumpy,
scipy.sparse, omegaconf, pytorch_lightning) resolve to inert stand-ins that only record their
state, from which the numbers are taken. Nothing named in a file is ever imported or executed.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import io
import os
import pickle
import types
from pathlib import Path
from typing import Any, BinaryIO, Literal, Mapping, cast

import numpy as np


class Opaque:
    """Stand-in for a class we do not load: keeps constructor arguments and pickled state."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self._qualname}>"


def _opaque_class(module: str, name: str) -> type:
    return type(name, (Opaque,), {"_qualname": f"{module}.{name}", "__module__": "pipeline.safe_pickle"})


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # NumPy 2 / 1; looked up by module name: the stubs do not list ``multiarray`` as an attribute
    multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    out: dict[tuple[str, str], Any] = {}
    # Files written by NumPy 1 name numpy.core, by NumPy 2 numpy._core: accept both spellings.
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = multiarray._reconstruct
        out[(mod, "scalar")] = multiarray.scalar
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = _frombuffer
    return out


def _frombuffer(buf: bytes, dtype: Any, shape: tuple[int, ...], order: str) -> np.ndarray:
    # NumPy >= 1.25 pickles contiguous arrays this way (protocol 5 path).
    # ``order`` comes from the file; numpy rejects anything but A, C, F
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=cast(Literal["A", "C", "F"], order)).copy()


_BUILTINS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,  # Python 2 spelling
    ("__builtin__", "frozenset"): frozenset,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes into a protocol-2 pickle
    ("copyreg", "_reconstructor"): None,  # filled below (object.__new__ of an allowed/opaque class)
}


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    if not isinstance(cls, type) or base not in (object, dict, list):
        raise pickle.UnpicklingError(f"refusing copyreg reconstruction of {cls!r} from {base!r}")
    obj = base.__new__(cls) if base is object else cls()
    return obj


def _torch_globals() -> dict[tuple[str, str], Any]:
    import torch
    import torch._utils as tu

    out: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch", "Size"): torch.Size,
    }
    if hasattr(tu, "_rebuild_tensor_v3"):
        out[("torch._utils", "_rebuild_tensor_v3")] = tu._rebuild_tensor_v3
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            out[("torch", name)] = value
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; everything else becomes an `Opaque` subclass.

    ``stand_ins`` maps (module, name) to a replacement callable for classes whose state we
    need in a usable form (chumpy arrays, scipy sparse matrices).
    """

    allowed: Mapping[tuple[str, str], Any] = {}
    stand_ins: Mapping[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self.stand_ins:
            return self.stand_ins[key]
        if key in self.allowed:
            return self.allowed[key]
        return _opaque_class(module, name)


def _make_unpickler(allowed: Mapping[tuple[str, str], Any], stand_ins: Mapping[tuple[str, str], Any]) -> type:
    table = dict(_BUILTINS)
    table[("copyreg", "_reconstructor")] = _reconstructor
    table.update(_numpy_globals())
    table.update(allowed)
    return type("Unpickler", (RestrictedUnpickler,), {"allowed": table, "stand_ins": dict(stand_ins)})


def load_pickle(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    encoding: str = "latin1",
    stand_ins: Mapping[tuple[str, str], Any] | None = None,
) -> Any:
    """Unpickle numpy-bearing data (SMPL, detectron2 model-zoo files) without executing code.

    ``encoding='latin1'`` reads Python 2 pickles (the original SMPL release) as NumPy expects.
    """
    cls = _make_unpickler({}, stand_ins or {})
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return cls(fh, encoding=encoding).load()
    return cls(source, encoding=encoding).load()


def torch_load(source: str | os.PathLike[str] | bytes | BinaryIO, map_location: Any = "cpu") -> Any:
    """``torch.load`` through `RestrictedUnpickler`: tensors are rebuilt, other objects are inert.

    Lightning checkpoints hold omegaconf/lightning objects that ``weights_only=True`` refuses and
    ``weights_only=False`` would import and run; this reads the tensors and keeps the rest as
    `Opaque` records.
    """
    import torch

    module = types.ModuleType("pose_restricted_pickle")
    module.Unpickler = _make_unpickler(_torch_globals(), {})  # type: ignore[attr-defined]
    module.load = lambda fh, **kw: module.Unpickler(fh, **kw).load()  # type: ignore[attr-defined]
    module.loads = lambda data, **kw: module.Unpickler(io.BytesIO(data), **kw).load()  # type: ignore[attr-defined]
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        source = Path(source)
    return torch.load(source, map_location=map_location, pickle_module=module, weights_only=False)
