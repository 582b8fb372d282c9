"""Tracker state to and from one ``.npz`` file: arrays stored as arrays, everything else as JSON."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

_ARRAY = "__array__"


def _split(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {_ARRAY: key}
    if isinstance(value, dict):
        return {str(k): _split(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return np.array(arrays[value[_ARRAY]])
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


def save_state(state: dict[str, Any], path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write a `Tracker.state_dict` (non-array values must be JSON-able) to ``path`` (.npz);
    ``compress=False`` trades disk for time (a state written every few frames)."""
    arrays: dict[str, np.ndarray] = {}
    meta = _split(state, arrays)
    path = Path(path)
    with open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(
            # allow_pickle is the default, spelled out so that mypy does not match **arrays to it
            fh, allow_pickle=True, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays
        )
    return path


def load_state(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """Read what `save_state` wrote (no pickle involved)."""
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with fh, np.load(fh, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            return _join(meta, data)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("tracker_state_invalid", f"not a tracker state file: {exc}") from exc
