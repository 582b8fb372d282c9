"""Images in process: detect people (unless boxes are given), recover their meshes.

One implementation for one photo and for a folder of them (4D-Humans' ``demo.py --img_folder``):
each image is read and its people detected on its own, then the person crops of all images go
through HMR2 together, ``batch_size`` crops a forward, whichever images they come from. Crops
are regressed as soon as a batch is full, so memory holds at most one batch of waiting crops
(plus the crops of the images they belong to), whatever the folder's size. An image that
cannot be read or decoded gets its error; the others are still processed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import InputError, PoseError
from .weights import CacheRoots

if TYPE_CHECKING:  # torch stays off the command line's start (it reads this module's constants)
    from .models.hmr2.predictor import HMR2Output, HMR2Predictor

logger = logging.getLogger(__name__)

# The files of a folder that are images: 4D-Humans demo.py's --file_type default.
IMAGE_PATTERNS: tuple[str, ...] = ("*.jpg", "*.png")
# Person crops per HMR2 forward: demo.py regresses its crops in batches of 8.
DEFAULT_BATCH_SIZE = 8

BoxList = Sequence[Sequence[float]]


def list_images(folder: str | Path, patterns: Sequence[str] = IMAGE_PATTERNS) -> list[Path]:
    """The files in ``folder`` matching any of ``patterns`` (glob, case-sensitive as demo.py's),
    each once, sorted by their path; `InputError` ``image_folder_empty`` when there are none."""
    root = Path(folder)
    found = {p for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    if not found:
        raise InputError("image_folder_empty", f"no file in {root} matches {' '.join(patterns)} (set the patterns with --file-type)")
    return sorted(found)


@dataclass
class ImageOutcome:
    """One image's answer: its result document (`ImageResult` as a JSON-able dict) or its error.

    ``output`` keeps HMR2's arrays (vertices included when asked for) for what is written
    beside the document (meshes)."""

    index: int  # position among the images given
    source: str | Path | None  # the file, None for an array
    result: dict[str, Any] | None = None
    error: PoseError | None = None
    output: HMR2Output | None = None


@dataclass
class _Waiting:
    """An image whose crops are queued or in flight."""

    index: int
    source: str | Path | None
    image_hw: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray | None
    models: dict[str, str]
    batch: Any  # CropBatch
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    received: int = 0

    @property
    def complete(self) -> bool:
        return self.received == len(self.batch)


class ImageRunner:
    """A person detector (optional: without it every image needs boxes) and HMR2.0 loaded once,
    for any number of images."""

    def __init__(
        self,
        hmr2: HMR2Predictor,
        detector: Any = None,
        *,
        max_people: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        detector_name: str = "vitdet",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected a batch size of at least 1, got {batch_size}")
        self.hmr2 = hmr2
        self.detector = detector
        self.detector_name = detector_name  # which detector it is, for the results' ``models``
        self.max_people = max_people
        self.batch_size = batch_size
        # one forward per batch handed over, never split further by the predictor
        self.hmr2.max_batch = max(self.hmr2.max_batch, batch_size)

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots | None = None,
        *,
        detect: bool = True,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        detector: str = "vitdet",
        detector_options: Mapping[str, Any] | None = None,
        max_people: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> "ImageRunner":
        """The models from their caches. ``detect`` False: no detector (callers give boxes).
        ``detector``: ``vitdet`` or ``regnety`` (`pipeline.models.detectors`); ``detector_options``:
        further arguments of its ``from_cache`` (thresholds; ViTDet's ``input_size``,
        ``post_nms_topk``), e.g. a serving profile's, to match the service.
        ``max_people``: detections beyond this (lowest scores) are not regressed, as the served
        MeshRegressor does (`configs.profiles.Limits.max_people`); None: all of them."""
        from .models.hmr2.predictor import HMR2Predictor

        roots = roots or CacheRoots.from_env()
        predictor = None
        if detect:
            from .models.detectors import load_detector

            predictor = load_detector(detector, roots, device=device, dtype=dtype, download=download, **dict(detector_options or {}))
        hmr2 = HMR2Predictor.from_cache(roots, device=device, dtype=dtype, download=download)
        return cls(hmr2, predictor, max_people=max_people, batch_size=batch_size, detector_name=detector)

    @property
    def faces(self) -> np.ndarray:
        """SMPL's triangles (13776, 3), for meshes written beside the results."""
        return self.hmr2.faces

    def run(
        self,
        sources: Sequence[str | Path | np.ndarray],
        *,
        boxes: Sequence[BoxList | None] | None = None,
        vertices: bool = False,
        keep_vertices: bool = False,
        progress: bool = False,
        desc: str | None = None,
    ) -> Iterator[ImageOutcome]:
        """One `ImageOutcome` per source, in order, each as soon as it and those before it are done.

        ``sources``: image files or BGR uint8 arrays. ``boxes``: per source, its person boxes
        (xyxy pixels; skips detection) or None (the detector finds them). ``vertices``: the
        documents carry the 6890 vertices per person; ``keep_vertices``: the outcomes' ``output``
        does (for meshes), whatever the documents carry. ``progress``: a bar on stderr, image by
        image. A `PoseError` of the caller's input (4xx) becomes that image's ``error``; others
        (missing weights, a broken device) end the run."""
        from tqdm import tqdm

        if boxes is not None and len(boxes) != len(sources):
            raise ValueError(f"expected one entry of boxes per image ({len(sources)}), got {len(boxes)}")
        with_vertices = vertices or keep_vertices
        waiting: deque[_Waiting] = deque()
        queued: list[np.ndarray] = []  # crops not yet through the network, in the order of ``waiting``
        done: dict[int, ImageOutcome] = {}
        next_out = 0
        found_none = 0
        with tqdm(total=len(sources), unit="image", disable=not progress, desc=desc) as bar:

            def ready() -> Iterator[ImageOutcome]:
                nonlocal next_out
                while waiting and waiting[0].complete:
                    item = waiting.popleft()
                    done[item.index] = self._finish(item, vertices=vertices, with_vertices=with_vertices)
                while next_out in done:
                    outcome = done.pop(next_out)
                    next_out += 1
                    bar.update(1)
                    yield outcome

            for index, source in enumerate(sources):
                name = None if isinstance(source, np.ndarray) else source
                try:
                    item = self._prepare(index, source, None if boxes is None else boxes[index])
                except InputError as exc:
                    logger.warning("%s: %s", name if name is not None else f"image {index}", exc)
                    done[index] = ImageOutcome(index=index, source=name, error=exc)
                else:
                    found_none += len(item.batch) == 0
                    waiting.append(item)
                    if len(item.batch):
                        queued.append(item.batch.img)
                while sum(len(c) for c in queued) >= self.batch_size:
                    queued = self._forward(queued, waiting, self.batch_size, with_vertices)
                yield from ready()
            while queued:
                queued = self._forward(queued, waiting, self.batch_size, with_vertices)
            yield from ready()
        if found_none and self.detector is not None:
            from .tiny import TINY_NOTE, is_tiny_detector

            if is_tiny_detector(self.detector):
                if len(sources) == 1:
                    logger.warning("no one found: %s", TINY_NOTE)
                else:
                    logger.warning("no one found in %d of %d images: %s", found_none, len(sources), TINY_NOTE)

    def _prepare(self, index: int, source: str | Path | np.ndarray, boxes: BoxList | None) -> _Waiting:
        """Read, detect (unless ``boxes``) and crop one image."""
        from .imageio import load_image
        from .models.hmr2.predictor import validate_boxes
        from .schema import models_used

        image = source if isinstance(source, np.ndarray) else load_image(source)
        scores = None
        if boxes is None:
            if self.detector is None:
                raise ValueError("this runner has no detector: give every image its boxes")
            detections = self.detector([image])[0]
            if self.max_people is not None and len(detections) > self.max_people:
                detections = detections.select(np.arange(self.max_people))
            box_array, scores = detections.boxes, detections.scores
            models = models_used("detector", "mesh", detector=self.detector_name)
            logger.debug("detected %d people in %s", len(box_array), "image %d" % index if isinstance(source, np.ndarray) else source)
        else:
            box_array = validate_boxes(boxes, image.shape[:2], allow_empty=False)
            models = models_used("mesh")
        box_array = np.asarray(box_array, dtype=np.float32).reshape(-1, 4)
        batch = self.hmr2.prepare(image, box_array)
        return _Waiting(
            index=index, source=None if isinstance(source, np.ndarray) else source, image_hw=image.shape[:2],
            boxes=box_array, scores=scores, models=models, batch=batch,
        )

    def _forward(self, queued: list[np.ndarray], waiting: deque[_Waiting], count: int, with_vertices: bool) -> list[np.ndarray]:
        """The first ``count`` queued crops (or all, if fewer) through one forward; their outputs
        handed to the images they belong to, in order. Returns the crops still queued."""
        crops = np.concatenate(queued)
        now, rest = crops[:count], crops[count:]
        raw = self.hmr2.forward_crops(now, vertices=with_vertices)
        start = 0
        for item in waiting:
            if start == len(now):
                break
            take = min(len(item.batch) - item.received, len(now) - start)
            if take <= 0:
                continue
            item.parts.append({k: v[start : start + take] for k, v in raw.items()})
            item.received += take
            start += take
        return [rest] if len(rest) else []

    def _finish(self, item: _Waiting, *, vertices: bool, with_vertices: bool) -> ImageOutcome:
        from .schema import ImageInfo, ImageResult, people_from_outputs

        if item.parts:
            raw = {k: np.concatenate([p[k] for p in item.parts]) for k in item.parts[0]}
        else:
            raw = self.hmr2.forward_crops(item.batch.img, vertices=with_vertices)  # nobody: empty arrays
        output = self.hmr2.finish(item.batch, raw, item.boxes)
        result = ImageResult(
            image=ImageInfo(width=item.image_hw[1], height=item.image_hw[0]),
            people=people_from_outputs(output, scores=item.scores, vertices=vertices),
            models=item.models,
        )
        return ImageOutcome(index=item.index, source=item.source, result=result.model_dump(mode="json"), output=output)


def run_image(
    photo: str | Path,
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    roots: CacheRoots | None = None,
    device: str | None = None,
    dtype: str = "float32",
    download: bool = True,
    vertices: bool = False,
    detector: str = "vitdet",
    detector_options: Mapping[str, Any] | None = None,
    max_people: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """The result document (`ImageResult` as JSON-able dict) for an image file: the folder path
    (`ImageRunner.run`) with one image; its error raised.

    ``detector``, ``detector_options``, ``max_people``: as `ImageRunner.from_cache`."""
    runner = ImageRunner.from_cache(
        roots, detect=boxes is None, device=device, dtype=dtype, download=download, detector=detector,
        detector_options=detector_options, max_people=max_people, batch_size=batch_size,
    )
    (outcome,) = runner.run([photo], boxes=None if boxes is None else [boxes], vertices=vertices)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None  # an outcome has one or the other
    return outcome.result
