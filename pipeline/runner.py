"""Videos in one process: decode → detect → HMR2.0 + appearance → PHALP tracking → result.

This is what ``python -m pipeline video`` runs, what a user without Ray can run, and the
baseline the served pipeline is measured against. The pieces that turn per-frame model outputs
into the result document (`observations_for`, `VideoResultBuilder`) are shared with the served
pipeline, so both produce the same document from the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import PoseError
from .models.hmr2.predictor import HMR2Output, HMR2Predictor
from .schema import MODEL_NAMES, Frame, Person, TrackSummary, VideoMeta, VideoResult, people_from_outputs
from .tracking.observation import PersonObservation
from .tracking.tracker import FrameTracks, Tracker, TrackerModels
from .video import VideoInfo, VideoLimits, iter_frames, probe_video
from .weights import CacheRoots

logger = logging.getLogger(__name__)


def observations_for(out: HMR2Output, scores: np.ndarray, uv: np.ndarray | None, embeddings: np.ndarray | None) -> list[PersonObservation]:
    """What the tracker reads of each person: detector box and score, SMPL, crop camera, texture."""
    people = []
    for i in range(len(out)):
        people.append(
            PersonObservation(
                bbox=out.boxes[i].astype(np.float64),
                score=float(scores[i]),
                global_orient=out.global_orient[i],
                body_pose=out.body_pose[i],
                betas=out.betas[i],
                pred_cam=out.pred_cam[i],
                uv=None if uv is None else uv[i],
                appearance=None if embeddings is None else embeddings[i],
                joints_3d=out.keypoints_3d[i],
                crop_center=out.box_center[i],
                crop_size=float(out.box_size[i]),
                extra=i,
            )
        )
    return people


@dataclass
class VideoResultBuilder:
    """Collects frames and applies PHALP's back-filling: when a track is confirmed, its earlier
    (tentative) detections receive its id too."""

    frames: list[Frame] = field(default_factory=list)
    _where: dict[int, int] = field(default_factory=dict)

    def add(self, frame_index: int, time_s: float, people: list[Person], tracks: FrameTracks) -> None:
        for person, track_id in zip(people, tracks.track_ids):
            person.track_id = track_id
        self._where[frame_index] = len(self.frames)
        self.frames.append(Frame(frame_index=frame_index, time_s=round(float(time_s), 6), people=people))
        for entry in tracks.backfill:
            pos = self._where.get(entry.frame_index)
            if pos is not None and entry.detection_index < len(self.frames[pos].people):
                self.frames[pos].people[entry.detection_index].track_id = entry.track_id

    def result(self, meta: VideoMeta, models: dict[str, str]) -> VideoResult:
        spans: dict[int, list[int]] = {}
        for frame in self.frames:
            for person in frame.people:
                if person.track_id is not None:
                    spans.setdefault(person.track_id, []).append(frame.frame_index)
        tracks = [
            TrackSummary(track_id=tid, first_frame=min(f), last_frame=max(f), num_frames=len(set(f)))
            for tid, f in sorted(spans.items())
        ]
        return VideoResult(video=meta, frames=self.frames, tracks=tracks, models=models)


def video_meta(info: VideoInfo, frames_decoded: int) -> VideoMeta:
    return VideoMeta(
        width=info.width,
        height=info.height,
        fps=info.fps,
        frame_count=frames_decoded,
        duration_s=info.duration_s,
        rotation=info.rotation,
    )


ProgressFn = Callable[[int, int | None, dict[str, float]], None]


class VideoRunner:
    """The three models loaded once; `run` processes one video with a fresh tracker."""

    def __init__(
        self,
        detector: object,
        hmr2: HMR2Predictor,
        appearance: object,
        tracker_models: TrackerModels,
        *,
        chunk_size: int = 8,
        limits: VideoLimits = VideoLimits(),
    ) -> None:
        self.detector = detector
        self.hmr2 = hmr2
        self.appearance = appearance
        self.tracker_models = tracker_models
        self.chunk_size = chunk_size
        self.limits = limits

    @classmethod
    def from_cache(
        cls,
        roots: CacheRoots | None = None,
        *,
        device: str | None = None,
        dtype: str = "float32",
        download: bool = True,
        detector_options: Mapping[str, Any] | None = None,
        **kwargs: object,
    ) -> "VideoRunner":
        """The three models from the caches. ``detector_options``: further `VitDetPredictor.from_cache`
        arguments (thresholds, ``input_size``, ``post_nms_topk``), e.g. a serving profile's, so the
        in-process result equals the served one."""
        from .models.phalp.loading import load_appearance_and_tracking
        from .models.vitdet.predictor import VitDetPredictor

        roots = roots or CacheRoots.from_env()
        detector = VitDetPredictor.from_cache(
            roots, device=device, dtype=dtype, download=download, **dict(detector_options or {})
        )
        hmr2 = HMR2Predictor.from_cache(roots, device=device, dtype=dtype, download=download)
        appearance, tracker_models = load_appearance_and_tracking(roots, device=device, download=download)
        return cls(detector, hmr2, appearance, tracker_models, **kwargs)  # type: ignore[arg-type]

    def process_frames(self, frames: Sequence[np.ndarray], *, vertices: bool = False) -> list[tuple[HMR2Output, np.ndarray, object]]:
        """Detection, mesh recovery (one batch over all people of the frames) and appearance."""
        detections = self.detector(list(frames), masks=True)  # type: ignore[operator]
        outputs = self.hmr2.predict_many([(f, d.boxes) for f, d in zip(frames, detections)], vertices=True)
        results = []
        for frame, det, out in zip(frames, detections, outputs):
            app = self.appearance(frame, out.box_center, out.box_size, out.vertices, out.cam_t, masks=det.masks, boxes=det.boxes)  # type: ignore[operator]
            if not vertices:
                out.vertices = None
            results.append((out, det.scores, app))
        return results

    def run(
        self,
        path: str | Path,
        *,
        vertices: bool = False,
        progress: bool = False,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> VideoResult:
        """Process one video file; ``on_progress(frames_done, frames_total, stage_seconds)`` per chunk."""
        from tqdm import tqdm

        info = probe_video(path, self.limits)
        tracker = Tracker(self.tracker_models)
        builder = VideoResultBuilder()
        timings = {"decode": 0.0, "models": 0.0, "tracking": 0.0}
        done = 0
        bar = tqdm(total=info.frame_count, unit="frame", disable=not progress, desc=Path(path).name)
        t0 = time.perf_counter()
        for chunk in iter_frames(path, self.limits, chunk_size=self.chunk_size):
            t1 = time.perf_counter()
            timings["decode"] += t1 - t0
            processed = self.process_frames(chunk.frames, vertices=vertices)
            t2 = time.perf_counter()
            timings["models"] += t2 - t1
            for index, time_s, frame, (out, scores, app) in zip(chunk.indices, chunk.timestamps, chunk.frames, processed):
                people = people_from_outputs(out, scores=scores, vertices=vertices)
                tracks = tracker.step(int(index), observations_for(out, scores, app.uv, app.embedding), frame.shape[:2])
                builder.add(int(index), float(time_s), people, tracks)
            t0 = time.perf_counter()
            timings["tracking"] += t0 - t2
            done += len(chunk)
            bar.update(len(chunk))
            if on_progress is not None:
                on_progress(done, info.frame_count if info.frame_count_exact else None, dict(timings))
            if should_stop is not None and should_stop():
                bar.close()
                raise PoseError("cancelled", "the job was cancelled", status=409)
        bar.close()
        return builder.result(video_meta(info, done), dict(MODEL_NAMES))
