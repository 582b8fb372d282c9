"""The ViTDet-H checkpoint as 4D-Humans downloads it, at the place detectron2's iopath cache keeps it.

iopath caches ``https://dl.fbaipublicfiles.com/<path>`` as ``<cache>/<path>``, the cache being
``$FVCORE_CACHE`` or ``~/.torch/iopath_cache`` (`CacheRoots.detectron2`), so a machine that ran
4D-Humans' demo already has the file there.
"""

from __future__ import annotations

from ...weights import Download, WeightFile
from ..detection.files import check_pickle_complete

CHECKPOINT_PATH = "detectron2/ViTDet/COCO/cascade_mask_rcnn_vitdet_h/f328730692/model_final_f05665.pkl"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/" + CHECKPOINT_PATH


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
