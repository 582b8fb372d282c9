"""Named presets for the serving graph: thresholds, batch sizes, request limits, resource shares.

A profile only supplies defaults; every value can be overridden by the application's arguments
(``serve_config.yaml`` ``args:``) and the batch settings by each deployment's ``user_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ProfileName = Literal["full", "tiny"]
# The person detectors 4D-Humans' demo offers: ViTDet-H (Cascade Mask R-CNN, the default) and the
# lighter RegNetY-4GF Mask R-CNN (``demo.py --detector regnety``).
DetectorName = Literal["vitdet", "regnety"]
DETECTOR_NAMES: tuple[DetectorName, ...] = ("vitdet", "regnety")


@dataclass(frozen=True)
class BatchSettings:
    """One ``@serve.batch`` queue."""

    max_batch_size: int  # items per forward (person crops for the regressor, images for the detector)
    batch_wait_timeout_s: float  # how long the first item waits for company


@dataclass(frozen=True)
class Limits:
    """What a single request may ask for."""

    max_upload_bytes: int  # request body, multipart framing included
    max_pixels: int  # decoded width x height; checked from the image header before decoding
    max_people: int  # client boxes per image, and detections passed on to the regressor


@dataclass(frozen=True)
class Fractions:
    """Share of one device per replica of each deployment (GPU fractions let the stages share a
    GPU). One key per deployment, named as in `STAGE_DEPLOYMENTS`."""

    detector: float  # Detector
    regressor: float  # MeshRegressor
    tracker: float  # Tracker: the video workers (decoding, PHALP's appearance step and tracker)
    renderer: float  # Renderer: the overlays (SMPL meshes rasterized over video frames and images)
    ingress: float = 0.0  # Ingress: never touches a model


# Each resource key (`Fractions`, and the application's ``gpu_fractions`` / ``cpu_fractions`` /
# ``placement``) and the one Serve deployment it sizes.
STAGE_DEPLOYMENTS: dict[str, str] = {
    "detector": "Detector",
    "regressor": "MeshRegressor",
    "tracker": "Tracker",
    "renderer": "Renderer",
    "ingress": "Ingress",
}


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    score_thresh: float  # ViTDet person score kept (4D-Humans keeps > 0.5)
    stage_score_thresh: float  # per cascade stage (4D-Humans' demo sets 0.25)
    detector_batch: BatchSettings  # whole images
    regressor_batch: BatchSettings  # person crops, from any number of requests
    limits: Limits
    gpu_fractions: Fractions  # applied only when the Ray cluster has GPUs
    cpu_fractions: Fractions  # always applied; the only resources on a CPU-only cluster
    # ViTDet test-time options (`VitDetPredictor` ``input_size`` / ``post_nms_topk``); None: the
    # checkpoint's own (1024 px, 1000 proposals). The in-process runner and the served Detector
    # both read them from here, so a profile gives the same detections in both.
    detector_input_size: int | None = None
    detector_post_nms_topk: int | None = None
    video_chunk_size: int = 8  # frames decoded and sent through the models together
    tiny_models: bool = False  # models come from the project's tiny factory, not the official caches
    seed: int = 0  # tiny factory seed
    notes: str = field(default="", compare=False)

    def detector_options(self) -> dict[str, int]:
        """Keyword arguments for `VitDetPredictor.from_cache` beyond the thresholds (unset ones left out)."""
        options = {"input_size": self.detector_input_size, "post_nms_topk": self.detector_post_nms_topk}
        return {k: v for k, v in options.items() if v is not None}

    def detector_settings(self, detector: DetectorName = "vitdet") -> dict[str, float | int]:
        """Every ``from_cache`` keyword the profile sets for that detector: the thresholds and, for
        ViTDet, the test-time options (RegNetY keeps detectron2's 800/1333 resize and one stage).
        The served Detector (``deployments/app.py``) and ``python -m pipeline`` both take them from
        here, so both detect the same people."""
        if detector == "regnety":
            return {"score_thresh": self.score_thresh}
        return {"score_thresh": self.score_thresh, "stage_score_thresh": self.stage_score_thresh, **self.detector_options()}

    def runner_options(self, detector: DetectorName = "vitdet") -> dict[str, Any]:
        """`VideoRunner.from_cache` keywords that run a video as the served video workers do: the
        detector and its settings, frames per chunk, people regressed per frame (the
        MeshRegressor's cap)."""
        return {
            "detector": detector,
            "detector_options": self.detector_settings(detector),
            "chunk_size": self.video_chunk_size,
            "max_people": self.limits.max_people,
        }


def full() -> Profile:
    """The real ViTDet-H, HMR2.0b and PHALP checkpoints from the upstream caches."""
    return Profile(
        name="full",
        score_thresh=0.5,
        stage_score_thresh=0.25,
        detector_batch=BatchSettings(max_batch_size=4, batch_wait_timeout_s=0.01),
        regressor_batch=BatchSettings(max_batch_size=32, batch_wait_timeout_s=0.01),
        limits=Limits(max_upload_bytes=32 * 2**20, max_pixels=40_000_000, max_people=64),
        gpu_fractions=Fractions(detector=0.5, regressor=0.3, tracker=0.1, renderer=0.1),
        # Shares, not thread counts: small enough that the whole graph fits on a 2-core laptop.
        cpu_fractions=Fractions(detector=0.5, regressor=0.5, tracker=0.2, renderer=0.2, ingress=0.1),
        notes="official checkpoints; one GPU holds one replica of each stage",
    )


def tiny() -> Profile:
    """Tiny random-weight models from the project's factory: the whole graph on a laptop CPU."""
    return Profile(
        name="tiny",
        score_thresh=0.5,
        stage_score_thresh=0.25,
        detector_batch=BatchSettings(max_batch_size=4, batch_wait_timeout_s=0.01),
        regressor_batch=BatchSettings(max_batch_size=16, batch_wait_timeout_s=0.05),
        limits=Limits(max_upload_bytes=32 * 2**20, max_pixels=40_000_000, max_people=64),
        gpu_fractions=Fractions(detector=0.1, regressor=0.1, tracker=0.05, renderer=0.05),
        cpu_fractions=Fractions(detector=0.25, regressor=0.25, tracker=0.1, renderer=0.1, ingress=0.1),
        # Half the input side and a tenth of the proposals: several times faster on a CPU. The
        # tiny detector's hand-set weights (pipeline/tiny/vitdet.py) are calibrated at both sizes.
        detector_input_size=512,
        detector_post_nms_topk=100,
        tiny_models=True,
        notes="random weights: proves the plumbing, never accuracy",
    )


PROFILES = {"full": full, "tiny": tiny}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"expected a profile in {sorted(PROFILES)}, got {name!r}") from None
