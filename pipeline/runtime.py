"""Device and dtype settings shared by the predictors."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Literal

import torch

from .errors import PoseError

logger = logging.getLogger(__name__)

DType = Literal["float32", "float16", "bfloat16"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> the first CUDA device when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PoseError("device_invalid", f"expected a torch device such as 'cpu' or 'cuda:0', got {device!r}", status=500) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PoseError("device_unavailable", f"device {device!r} requested but CUDA is not available", status=500)
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Compute dtype; half precision runs as autocast on GPU only.

    On a CPU a half dtype falls back to float32 with a warning, so one serving config starts on
    any machine (CPU half kernels are slow or missing).
    """
    if dtype not in _DTYPES:
        raise PoseError("dtype_invalid", f"expected one of {sorted(_DTYPES)}, got {dtype!r}", status=500)
    if dtype != "float32" and device.type != "cuda":
        logger.warning("dtype %s needs a GPU; running in float32 on %s", dtype, device.type)
        return torch.float32
    return _DTYPES[dtype]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision for half dtypes; a no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
