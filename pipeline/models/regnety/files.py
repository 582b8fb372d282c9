"""The RegNetY-4GF Mask R-CNN checkpoint as 4D-Humans downloads it (``demo.py --detector
regnety``), at the place detectron2's iopath cache keeps it (``<cache>/<path after the host>``,
as for ViTDet's, `pipeline.models.vitdet.files`)."""

from __future__ import annotations

from ...weights import Download, WeightFile
from ..detection.files import check_pickle_complete

CHECKPOINT_PATH = "detectron2/new_baselines/mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ/42045954/model_final_ef3a80.pkl"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/" + CHECKPOINT_PATH

FILES: tuple[WeightFile, ...] = (
    WeightFile(
        key="regnety.checkpoint",
        root="detectron2",
        path=CHECKPOINT_PATH,
        description="RegNetY-4GF Mask R-CNN (COCO), detectron2 model zoo, 4D-Humans' fast detector",
        download=Download(
            name="model_final_ef3a80.pkl",
            root="detectron2",
            target=CHECKPOINT_PATH,
            urls=(CHECKPOINT_URL,),
        ),
        check=check_pickle_complete,
    ),
)
