"""Videos in one process: decode → detect → HMR2.0 + appearance → PHALP tracking → result files.

This is what ``python -m pipeline video`` runs, what a user without Ray can run, and the
baseline the served pipeline is measured against. It runs the same `VideoLoop` as the served
video workers, with the models of this process as its stages, so both produce the same files
from the same numbers.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.models.hmr2.predictor import HMR2Predictor
from pipeline.schema import VideoResult, models_used
from pipeline.tracking.tracker import TrackerModels
from pipeline.video.decode import VideoLimits
from pipeline.video.frame_range import FrameRange
from pipeline.video.loop import LocalStages, VideoLoop, observations_for, video_meta
from pipeline.video.results import NPZ_VERTICES_NAME, write_json_document
from pipeline.weights import CacheRoots

logger = logging.getLogger(__name__)

__all__ = ["VideoRunner", "VideoFiles", "observations_for", "video_meta"]

ProgressFn = Callable[[int, "int | None", dict[str, float]], None]


@dataclass(frozen=True)
class VideoFiles:
    """The published result files of one video (see `pipeline.video.results`)."""

    jsonl: Path  # frames, one JSON object a line
    meta: Path  # the rest of the document (video, tracks, models)
    npz: Path  # flat arrays, no vertices
    npz_vertices: Path | None  # flat arrays with vertices, when they were kept
    frames: int
    tracks: int

    def write_json(self, out: str | Path) -> Path:
        """The whole `VideoResult` JSON document into ``out`` (streamed, atomically)."""
        return write_json_document(self.jsonl, self.meta, out)


class VideoRunner:
    """The three models loaded once; `run_to` processes one video with a fresh tracker."""

    def __init__(
        self,
        detector: object,
        hmr2: HMR2Predictor,
        appearance: object,
        tracker_models: TrackerModels,
        *,
        chunk_size: int = 8,
        limits: VideoLimits = VideoLimits(),
        max_people: int | None = 64,
        detector_name: str = "vitdet",
    ) -> None:
        self.detector = detector
        self.detector_name = detector_name  # which detector it is, for the result's ``models``
        self.hmr2 = hmr2
        self.appearance = appearance
        self.tracker_models = tracker_models
        self.chunk_size = chunk_size
        self.limits = limits
        # max_people: as the served MeshRegressor's default, so both regress the same people
        self.stages = LocalStages(detector, hmr2, max_people=max_people)
        self.loop = VideoLoop(self.stages, appearance, tracker_models, chunk_size=chunk_size, limits=limits)

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots | None = None,
        *,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        detector: str = "vitdet",
        detector_options: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> "VideoRunner":
        """The three models from the caches. ``detector``: ``vitdet`` or ``regnety``;
        ``detector_options``: further arguments of its ``from_cache`` (thresholds, ViTDet's
        ``input_size``, ``post_nms_topk``), e.g. a serving profile's, so the in-process result
        equals the served one."""
        from pipeline.models.detectors import load_detector
        from pipeline.tracking.loading import load_appearance_and_tracking

        roots = roots or CacheRoots.from_env()
        predictor = load_detector(
            detector, roots, device=device, dtype=dtype, download=download, **dict(detector_options or {})
        )
        hmr2 = HMR2Predictor.from_cache(roots, device=device, dtype=dtype, download=download)
        appearance, tracker_models = load_appearance_and_tracking(roots, device=device, download=download)
        return cls(predictor, hmr2, appearance, tracker_models, detector_name=detector, **kwargs)  # type: ignore[arg-type]

    def run_to(
        self,
        path: str | Path,
        out_dir: str | Path,
        *,
        vertices: bool = False,
        progress: bool = False,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        frame_range: FrameRange | None = None,
    ) -> VideoFiles:
        """Process one video file into result files under ``out_dir`` (memory flat in length);
        ``on_progress(frames_done, frames_total, stage_seconds)`` after each chunk;
        ``frame_range``: only those frames (`pipeline.video.frame_range`)."""
        from tqdm import tqdm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tqdm(unit="frame", disable=not progress, desc=Path(path).name) as bar, \
                tempfile.TemporaryDirectory(prefix=".segments-", dir=out_dir) as work:
            def on_chunk(state: Mapping[str, Any], done: int, frames_total: int | None, timings: dict[str, float]) -> None:
                if on_progress is not None:
                    on_progress(done, frames_total, timings)

            def on_start(total: int | None) -> None:
                bar.total = total
                bar.refresh()

            done = self.loop.run(path, work, vertices=vertices, on_chunk=on_chunk, should_stop=should_stop,
                                 on_frames=bar.update, on_start=on_start, frame_range=frame_range)
            names = done.writer.finalize(out_dir, done.meta, models_used("detector", "mesh", "tracker", detector=self.detector_name))
        return VideoFiles(
            jsonl=out_dir / names["jsonl"],
            meta=out_dir / names["meta"],
            npz=out_dir / names["npz"],
            npz_vertices=out_dir / NPZ_VERTICES_NAME if vertices else None,
            frames=done.meta.frame_count,
            tracks=len(done.writer.spans),
        )

    def run(self, path: str | Path, **kwargs: Any) -> VideoResult:
        """`run_to` a temporary folder, then the document in memory: for short clips and tests
        (a long video's document does not fit in memory; use `run_to`)."""
        with tempfile.TemporaryDirectory(prefix="pose-video-") as tmp:
            files = self.run_to(path, tmp, **kwargs)
            out = files.write_json(Path(tmp) / "result.json")
            return VideoResult.model_validate_json(out.read_bytes())
