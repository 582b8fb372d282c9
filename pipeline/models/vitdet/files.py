"""The ViTDet-H checkpoint as 4D-Humans downloads it, at the place detectron2's iopath cache keeps it.

iopath caches ``https://dl.fbaipublicfiles.com/<path>`` as ``<cache>/<path>``, the cache being
``$FVCORE_CACHE`` or ``~/.torch/iopath_cache`` (`CacheRoots.detectron2`), so a machine that ran
4D-Humans' demo already has the file there.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import WeightsError
from ...weights import Download, WeightFile

CHECKPOINT_PATH = "detectron2/ViTDet/COCO/cascade_mask_rcnn_vitdet_h/f328730692/model_final_f05665.pkl"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/" + CHECKPOINT_PATH


def check_pickle_complete(path: Path) -> None:
    """Cheap truncation check run after download and at startup: a pickle ends with its STOP
    opcode. The full structural check (every key and shape) happens when the model loads, so
    the 2.6 GB file is not parsed twice."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            raise WeightsError("weights_corrupt", f"{path} is empty; delete it and fetch again")
        fh.seek(-1, 2)
        if fh.read(1) != b".":
            raise WeightsError("weights_corrupt", f"{path} does not end like a pickle (truncated download?); delete it and fetch again")


FILES: tuple[WeightFile, ...] = (
    WeightFile(
        key="vitdet.checkpoint",
        root="detectron2",
        path=CHECKPOINT_PATH,
        description="ViTDet-H Cascade Mask R-CNN (COCO), detectron2 model zoo, as used by 4D-Humans",
        download=Download(
            name="model_final_f05665.pkl",
            root="detectron2",
            target=CHECKPOINT_PATH,
            urls=(CHECKPOINT_URL,),
        ),
        check=check_pickle_complete,
    ),
)
