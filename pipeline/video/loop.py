"""The one video loop: chunk → detect → regress → appearance → track → write, resumable.

`python -m pipeline video` and the served video workers both run `VideoLoop`; they differ only
in the `FrameStages` they hand it (the models in this process, or the Detector and
MeshRegressor deployments). Everything that is per job lives here, in the process running the
job: the PHALP tracker state, the appearance step (it needs the frame, the mesh and the mask at
once, and makes the 1 MiB UV maps that only the tracker reads), the result writer. Nothing of a
job is kept by a stage, so any stage replica may answer any frame.

After every chunk the loop hands its `state` (plain data: frames done, tracker state, result
writer) to ``on_chunk``; the caller persists it. `run` with ``resume=state`` continues from
there: frames before ``next_frame`` are decoded and skipped, tracking and the result continue
exactly as if never interrupted. A transient stage failure (a replica died, back-pressure) makes
the loop go back to its last state and redo at most the chunks in flight, after a back-off;
past ``max_stage_wait_s`` of failures in a row the job fails with the last error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from pipeline.errors import PoseError
from pipeline.models.hmr2.predictor import HMR2Output
from pipeline.models.vitdet.predictor import Detections
from pipeline.schema import VideoMeta, VideoRange
from pipeline.tracking.association import TexturePairs
from pipeline.tracking.observation import PersonObservation
from pipeline.tracking.tracker import Tracker, TrackerModels
from pipeline.video.decode import FrameChunk, VideoInfo, VideoLimits, iter_frames, probe_video
from pipeline.video.frame_range import FrameRange
from pipeline.video.results import FrameRecord, ResultWriter

logger = logging.getLogger(__name__)

STATE_FORMAT = "pose-service/video-loop"
STATE_VERSION = 1
# Seconds per stage a run adds up (reported with progress): decoding, waiting for the model
# stages, masks + UV texture + appearance embedding, PHALP tracking, result writing.
TIMINGS = ("decode_s", "models_s", "appearance_s", "tracking_s", "write_s")


@dataclass
class FrameModels:
    """What the model stages return for one frame: the people found and their HMR2 outputs
    (vertices included, the appearance step needs them). Small arrays only: the masks stay at
    the mask head's resolution (`Detections.mask_probs`)."""

    detections: Detections
    output: HMR2Output


class FrameStages(Protocol):
    """Detection + mesh recovery for the frames of a chunk.

    ``submit`` starts the work and returns a function that waits for it, so the loop can start
    chunk k + 1 before it tracks chunk k; where that function has a ``cancel()`` (which must not
    raise), the loop calls it for work it drops (a failure or a cancel while the work runs). ``transient`` says whether
    an error raised while waiting is worth retrying (a stage replica died, a queue was full);
    None: it is final.
    """

    def submit(self, chunk: FrameChunk) -> Callable[[], list[FrameModels]]: ...

    def transient(self, exc: BaseException) -> PoseError | None: ...


class LocalStages:
    """The detector and HMR2 predictors of this process (the in-process runner).

    ``max_people``: detections per frame beyond this (lowest scores) are not regressed, as the
    served MeshRegressor does. ``seconds`` adds up the time spent in each model, so an
    in-process run can say where a frame's time goes (the served stages report theirs as
    metrics); ``people`` counts the people regressed."""

    def __init__(self, detector: Any, hmr2: Any, *, max_people: int | None = None) -> None:
        self.detector = detector
        self.hmr2 = hmr2
        self.max_people = max_people
        self.seconds = {"detect_s": 0.0, "hmr2_s": 0.0}
        self.people = 0

    def submit(self, chunk: FrameChunk) -> Callable[[], list[FrameModels]]:
        frames = list(chunk.frames)

        def run() -> list[FrameModels]:
            t0 = time.perf_counter()
            detections = self.detector(frames, masks="probs")
            if self.max_people is not None:
                detections = [d.select(np.arange(self.max_people)) if len(d) > self.max_people else d for d in detections]
            t1 = time.perf_counter()
            outputs = self.hmr2.predict_many([(f, d.boxes) for f, d in zip(frames, detections)], vertices=True)
            self.seconds["detect_s"] += t1 - t0
            self.seconds["hmr2_s"] += time.perf_counter() - t1
            self.people += sum(len(o) for o in outputs)
            return [FrameModels(d, o) for d, o in zip(detections, outputs)]

        return run

    def transient(self, exc: BaseException) -> PoseError | None:
        return None


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


def video_meta(info: VideoInfo, frames: int, frame_range: FrameRange | None = None, first_frame: int = 0) -> VideoMeta:
    """The result's ``video``: ``frames`` processed, from ``first_frame`` on when a range was asked."""
    span = None
    if frame_range is not None:
        span = VideoRange(
            start_frame=first_frame, end_frame=first_frame + frames,
            requested=frame_range.to_options(),
        )
    return VideoMeta(
        width=info.width,
        height=info.height,
        fps=info.fps,
        frame_count=frames,
        duration_s=info.duration_s,
        rotation=info.rotation,
        range=span,
    )


@dataclass
class LoopResult:
    """A finished video: its metadata and the writer holding the segments (call `finalize`)."""

    meta: VideoMeta
    writer: ResultWriter
    timings: dict[str, float]
    resumed_from: int  # first frame this run decoded and tracked (0: from the start)


ChunkFn = Callable[[dict[str, Any], int, "int | None", dict[str, float]], None]


class VideoLoop:
    """Runs videos through ``stages``; appearance and tracking in this process."""

    def __init__(
        self,
        stages: FrameStages,
        appearance: Any,
        tracker_models: TrackerModels,
        *,
        chunk_size: int = 8,
        limits: VideoLimits = VideoLimits(),
        max_stage_wait_s: float = 120.0,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        texture_pairs: TexturePairs = "decisive",
    ) -> None:
        self.stages = stages
        self.appearance = appearance
        self.tracker_models = tracker_models
        self.chunk_size = chunk_size
        self.limits = limits
        self.max_stage_wait_s = max_stage_wait_s
        self.backoff_s = backoff_s
        # PHALP's decisions either way; "decisive" encodes only the texture pairs they depend on.
        self.texture_pairs = texture_pairs

    def run(
        self,
        path: str | Path,
        work_dir: str | Path,
        *,
        token: int = 1,
        vertices: bool = False,
        resume: Mapping[str, Any] | None = None,
        on_chunk: ChunkFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_frames: Callable[[int], None] | None = None,
        on_start: Callable[[int | None], None] | None = None,
        frame_range: FrameRange | None = None,
    ) -> LoopResult:
        """Process one video into segments under ``work_dir``; see the module docstring.

        ``token``: the attempt's fencing token (names its segment files). ``on_chunk(state,
        frames_done, frames_total, timings)`` after every chunk; ``should_stop()`` between chunks
        (True: cancelled); ``on_frames(n)`` as frames are tracked (progress bars);
        ``on_start(frames_total)`` once the video is probed (None: its length is not exact).
        ``frame_range``: only those frames (`pipeline.video.frame_range`), the models run on no
        other; frame indices and times stay the whole video's, tracking starts fresh at the
        range's first frame, and progress counts the range's frames.
        """
        info = probe_video(path, self.limits)
        if frame_range is None:
            total = info.frame_count if info.frame_count_exact else None
        else:
            frame_range.check_video(info.frame_count, info.frame_count_exact, info.duration_s)
            total = frame_range.expected_frames(info.frame_count, info.frame_count_exact)
        if on_start is not None:
            on_start(total)
        state = dict(resume) if resume is not None else None
        if state is not None and (state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION):
            raise PoseError("job_checkpoint_invalid", f"expected a {STATE_FORMAT} v{STATE_VERSION} checkpoint", status=500)
        resumed_from = int(state["next_frame"]) if state is not None else 0
        if state is not None:
            logger.info("resuming %s at frame %d (chunk %d)", Path(path).name, resumed_from, int(state["chunks"]))
        failing_since: float | None = None
        delay = self.backoff_s[0]
        while True:
            try:
                state = self._attempt(
                    path, work_dir, token, vertices, state, total, on_chunk, should_stop, on_frames, frame_range
                )
                break
            except _StageFailure as failure:
                state = failure.state
                now = time.monotonic()
                if failure.progressed or failing_since is None:
                    failing_since, delay = now, self.backoff_s[0]
                elif now - failing_since > self.max_stage_wait_s:
                    raise failure.error from None
                logger.warning(
                    "%s: %s; resuming at frame %d in %.1f s",
                    Path(path).name, failure.error, int(state["next_frame"]), delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.backoff_s[1])
        assert state is not None
        writer = ResultWriter.from_state(work_dir, token, state["writer"])
        first = int(state.get("first_frame") or 0)
        meta = video_meta(info, int(state["next_frame"]) - first, frame_range, first)
        return LoopResult(meta, writer, dict(state["timings"]), resumed_from)

    # -- one pass from a state to the end (or to a stage failure) --------------------------------
    def _attempt(self, path, work_dir, token, vertices, state, total, on_chunk, should_stop, on_frames, frame_range) -> dict[str, Any]:
        tracker = Tracker(self.tracker_models, texture_pairs=self.texture_pairs)
        # first_frame: the first frame tracked, known once decoded (a range of seconds); None before
        first_frame: int | None
        if state is None:
            writer = ResultWriter(work_dir, token, vertices=vertices)
            next_frame, chunks, timings, first_frame = 0, 0, dict.fromkeys(TIMINGS, 0.0), None
            state = self._state(0, 0, tracker, writer, timings, first_frame)
        else:
            tracker.load_state_dict(state["tracker"])
            writer = ResultWriter.from_state(work_dir, token, state["writer"])
            next_frame, chunks = int(state["next_frame"]), int(state["chunks"])
            timings = {**dict.fromkeys(TIMINGS, 0.0), **state["timings"]}
            first_frame = state.get("first_frame", 0)  # checkpoints written before ranges: from frame 0
        progressed = False
        # a generator (closed below), though iter_frames is annotated as returning an Iterator
        frames = iter_frames(
            path, self.limits, chunk_size=self.chunk_size, start_frame=next_frame, frame_range=frame_range
        )
        pending: tuple[FrameChunk, Callable[[], list[FrameModels]]] | None = None
        submitted = None
        try:
            while True:
                t0 = time.perf_counter()
                chunk = next(frames, None)
                timings["decode_s"] += time.perf_counter() - t0
                submitted = (chunk, self.stages.submit(chunk)) if chunk is not None else None
                if pending is not None:
                    t0 = time.perf_counter()
                    try:
                        models = pending[1]()
                    except Exception as exc:
                        transient = self.stages.transient(exc)
                        if transient is None:
                            raise
                        raise _StageFailure(state, transient, progressed) from None
                    timings["models_s"] += time.perf_counter() - t0
                    self._track(pending[0], models, tracker, writer, vertices, timings)
                    t0 = time.perf_counter()
                    writer.flush(tracker.settled_before())
                    timings["write_s"] += time.perf_counter() - t0
                    if first_frame is None:
                        first_frame = int(pending[0].start)
                    next_frame = int(pending[0].start + len(pending[0]))
                    chunks += 1
                    state = self._state(next_frame, chunks, tracker, writer, timings, first_frame)
                    progressed = True
                    if on_frames is not None:
                        on_frames(len(pending[0]))
                    if on_chunk is not None:
                        on_chunk(state, next_frame - first_frame, total, dict(timings))
                    if should_stop is not None and should_stop():
                        raise PoseError("cancelled", "the job was cancelled", status=409)
                if submitted is None:
                    break
                pending = submitted
        except BaseException:
            for started in (pending, submitted):  # work in flight that no one will wait for
                cancel = getattr(started[1], "cancel", None) if started is not None else None
                if cancel is not None:
                    cancel()
            raise
        finally:
            frames.close()
        return state

    def _track(self, chunk: FrameChunk, models: Sequence[FrameModels], tracker: Tracker, writer: ResultWriter, vertices: bool, timings: dict[str, float]) -> None:
        for index, time_s, frame, fm in zip(chunk.indices, chunk.timestamps, chunk.frames, models):
            t0 = time.perf_counter()
            out, det = fm.output, fm.detections
            n = len(out)
            scores = det.scores[:n]
            masks = det.full_masks(frame.shape[0], frame.shape[1])
            app = self.appearance(
                frame, out.box_center, out.box_size, out.vertices, out.cam_t,
                masks=None if masks is None else masks[:n], boxes=out.boxes,
            )
            if not vertices:
                out.vertices = None
            t1 = time.perf_counter()
            tracks = tracker.step(int(index), observations_for(out, scores, app.uv, app.embedding), frame.shape[:2])
            writer.add(FrameRecord(int(index), float(time_s), out, np.asarray(scores, np.float32), list(tracks.track_ids)))
            for entry in tracks.backfill:
                writer.backfill(entry.frame_index, entry.detection_index, entry.track_id)
            timings["appearance_s"] += t1 - t0
            timings["tracking_s"] += time.perf_counter() - t1

    @staticmethod
    def _state(
        next_frame: int, chunks: int, tracker: Tracker, writer: ResultWriter, timings: dict[str, float], first_frame: int | None
    ) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "next_frame": next_frame,  # the next frame index to decode and track (of the whole video)
            "first_frame": first_frame,  # the first frame tracked (a range's start); None before any
            "chunks": chunks,
            "tracker": tracker.state_dict(),
            "writer": writer.state(),
            "timings": dict(timings),
        }


class _StageFailure(Exception):
    """A transient stage error, with the last state to go back to."""

    def __init__(self, state: dict[str, Any], error: PoseError, progressed: bool) -> None:
        super().__init__(str(error))
        self.state = state
        self.error = error
        self.progressed = progressed
