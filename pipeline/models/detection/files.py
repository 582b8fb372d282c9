"""Checks of detectron2 model-zoo files that run without loading any model code."""

from __future__ import annotations

from pathlib import Path

from ...errors import WeightsError


def check_pickle_complete(path: Path) -> None:
    """Cheap truncation check run after download and at startup: a pickle ends with its STOP
    opcode. The full structural check (every key and shape) happens when the model loads, so
    a checkpoint of gigabytes is not parsed twice."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            raise WeightsError("weights_corrupt", f"{path} is empty; delete it and fetch again")
        fh.seek(-1, 2)
        if fh.read(1) != b".":
            raise WeightsError("weights_corrupt", f"{path} does not end like a pickle (truncated download?); delete it and fetch again")
