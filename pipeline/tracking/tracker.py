"""PHALP's tracker, frame by frame or over a whole sequence, without Ray or any I/O.

Corresponds to PHALP's ``Tracker`` (deep_sort ``tracker.py`` as PHALP modifies it) and the
per-frame bookkeeping of ``PHALP.track()``: ageing, EQ_019 association, track updates with
texture blending, pose and location prediction, track creation, confirmation after ``n_init``
hits with the earlier frames back-filled, and deletion. Deliberate departures from the reference
are marked "Deviation" and listed in docs/phalp.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence, cast

import numpy as np
import torch

from ..errors import InputError
from ..models.phalp.config import PhalpConfig
from ..models.phalp.encoder import PhalpAppearanceEncoder
from ..models.phalp.predictor import PhalpPosePredictor
from .association import CostTerms, EncoderTextureCost, TextureCost, TexturePairs, assign, cost_matrix
from .location import predict_location
from .observation import DetectionRecord, PersonObservation, build_detection, check_image_size, check_person
from .track import Track, TrackState, blend_texture

logger = logging.getLogger(__name__)

STATE_FORMAT = "pose-service/phalp-tracker"
STATE_VERSION = 1


@dataclass
class TrackerModels:
    """The networks the tracker runs: PHALP's pose predictor and appearance encoder."""

    pose_predictor: PhalpPosePredictor
    appearance_encoder: PhalpAppearanceEncoder | None
    # How the texture cue is computed; default: the encoder on pair-masked UV maps, as PHALP.
    # None with no encoder: the texture cue is 0.
    texture_cost: TextureCost | None = None

    def texture(self, config: PhalpConfig) -> TextureCost | None:
        if self.texture_cost is not None:
            return self.texture_cost
        if self.appearance_encoder is None:
            return None
        return EncoderTextureCost(self.appearance_encoder, config.uv_size, config.texture_batch_size)


@dataclass(frozen=True)
class TrackReport:
    """A confirmed track as recorded for a frame (one entry of ``track()``'s per-frame lists)."""

    track_id: int
    bbox_tlwh: tuple[float, float, float, float]  # last matched detection's box, x, y, w, h pixels
    time_since_update: int  # 0 when matched in this frame
    detection_index: int | None  # input index of the matched detection when time_since_update == 0
    conf: float
    extra: Any


@dataclass(frozen=True)
class BackfillEntry:
    """A detection of an earlier frame that belongs to a track confirmed in this frame."""

    frame_index: int
    detection_index: int
    track_id: int
    bbox_tlwh: tuple[float, float, float, float]
    conf: float
    extra: Any


@dataclass
class FrameTracks:
    """The tracker's answer for one frame.

    ``track_ids[i]`` is the confirmed track id of input person i, or None (tentative track,
    dropped, or a new track); ``assigned_ids[i]`` is the id of whichever track took person i
    (tentative ones included). ``backfill`` lists the earlier detections of tracks confirmed in
    this frame, which the caller should label retroactively.
    """

    frame_index: int
    track_ids: list[int | None]
    assigned_ids: list[int | None]
    dropped: dict[int, str]  # input index -> why it was not tracked
    tracks: list[TrackReport]  # confirmed tracks after this frame, in the tracker's list order
    backfill: list[BackfillEntry]
    matches: list[tuple[int, int]]  # (track id, input index), in the reference's order
    unmatched_track_ids: list[int]
    unmatched_detections: list[int]  # input indices, in the reference's order
    new_track_ids: list[int]
    deleted_track_ids: list[int]
    row_track_ids: list[int] = field(default_factory=list)  # rows of ``cost``
    cost: CostTerms | None = field(default=None, repr=False)  # columns = kept detections


@dataclass
class FrameInput:
    """One frame for `Tracker.run`."""

    frame_index: int
    people: list[PersonObservation]
    image_size: tuple[int, int]  # (height, width)


class Tracker:
    """PHALP 3D tracking of people from their per-frame detector + HMR2 + appearance outputs.

    ``texture_pairs="decisive"`` encodes only the texture pairs the assignment needs: the same
    decisions as the default ``"all"`` (see `cost_matrix`), several times fewer encoder runs in
    crowds, but ``FrameTracks.cost`` then holds lower bounds for the pairs it left out.
    """

    def __init__(
        self, models: TrackerModels, config: PhalpConfig | None = None, *, texture_pairs: TexturePairs = "all"
    ) -> None:
        if texture_pairs not in ("all", "decisive"):
            raise ValueError(f"expected texture_pairs 'all' or 'decisive', got {texture_pairs!r}")
        self.models = models
        self.config = config or PhalpConfig()
        self.texture_pairs = texture_pairs
        self._texture = models.texture(self.config)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video)."""
        self.tracks: list[Track] = []
        self.next_id = 1
        self.last_frame: int | None = None
        # Frames in which the tracker held at least one track, newest last (back-filling indexes these).
        self.tracked_frames: deque[int] = deque(maxlen=max(1, self.config.n_init))

    def settled_before(self) -> int | None:
        """Frames before this index can no longer get a back-filled track id; None: no frame can.

        A later confirmation back-fills at most the ``n_init - 1`` frames before it among the
        frames in which the tracker held tracks (``tracked_frames``), so only those stay open.
        """
        reach = self.config.n_init - 1
        if reach <= 0 or not self.tracked_frames:
            return None
        frames = list(self.tracked_frames)[-reach:]
        return int(frames[0])

    # -----------------------------------------------------------------------------------------
    # Per frame

    def step(
        self, frame_index: int, people: Sequence[PersonObservation], image_size: tuple[int, int]
    ) -> FrameTracks:
        """Track one frame; frames must come in increasing order (gaps are allowed)."""
        cfg = self.config
        image_size = check_image_size(image_size)
        frame_index = int(frame_index)
        if self.last_frame is not None and frame_index <= self.last_frame:
            raise InputError(
                "frame_order", f"expected frame index > {self.last_frame} (frames in order), got {frame_index}"
            )
        self.last_frame = frame_index
        detections, dropped = self._detections(frame_index, people, image_size)

        for track in self.tracks:  # deep_sort Tracker.predict: ageing only
            track.age += 1
            track.time_since_update += 1

        row_ids = [t.track_id for t in self.tracks]
        terms: CostTerms | None = None
        if self.tracks and detections:
            terms = cost_matrix(
                np.stack([t.pred_pose for t in self.tracks]),
                np.stack([t.pred_loca for t in self.tracks]),
                [t.pred_uv for t in self.tracks],
                np.stack([d.pose for d in detections]),
                np.stack([d.loca for d in detections]),
                [d.uv for d in detections],
                cfg,
                self._texture,
                self.texture_pairs,
            )
            result = assign(terms.cost, cfg.hungarian_th)
            matches, unmatched_rows, unmatched_cols = result.matches, result.unmatched_rows, result.unmatched_cols
        else:
            matches, unmatched_rows, unmatched_cols = [], list(range(len(self.tracks))), list(range(len(detections)))

        for row, col in matches:
            self._update(self.tracks[row], detections[col])
        self._predict([self.tracks[row] for row, _ in matches])
        for row in unmatched_rows:
            track = self.tracks[row]
            if track.is_tentative or track.time_since_update > cfg.max_age_track:
                track.state = TrackState.DELETED
        self._predict([self.tracks[row] for row in unmatched_rows])

        new_ids = [self._initiate(detections[col]) for col in unmatched_cols]
        deleted = [t.track_id for t in self.tracks if t.is_deleted]
        self.tracks = [t for t in self.tracks if not t.is_deleted]
        for d in detections:
            d.uv = None  # the texture lives on in the tracks' blended maps only
        return self._report(frame_index, len(people), detections, dropped, matches, unmatched_rows,
                            unmatched_cols, new_ids, deleted, row_ids, terms)

    def run(self, frames: Iterable[FrameInput | tuple[int, Sequence[PersonObservation], tuple[int, int]]]) -> list[FrameTracks]:
        """Track a whole sequence; returns one `FrameTracks` per frame (state continues from now)."""
        out = []
        for frame in frames:
            if isinstance(frame, FrameInput):
                out.append(self.step(frame.frame_index, frame.people, frame.image_size))
            else:
                index, people, size = frame
                out.append(self.step(index, people, size))
        return out

    # -----------------------------------------------------------------------------------------
    # Internals

    def _detections(
        self, frame_index: int, people: Sequence[PersonObservation], image_size: tuple[int, int]
    ) -> tuple[list[DetectionRecord], dict[int, str]]:
        """Filter as PHALP does before tracking (score, small boxes) plus malformed input, then build vectors.

        Deviation: a person with NaN/inf values or a non-positive camera scale is dropped (the
        reference would carry NaN into the cost, where ``nan_to_num`` turns it into a perfect match).
        """
        cfg = self.config
        if people is None:
            people = []
        kept: list[DetectionRecord] = []
        dropped: dict[int, str] = {}
        for i, person in enumerate(people):
            if not isinstance(person, PersonObservation):
                raise InputError("person_invalid", f"expected PersonObservation items, got {type(person).__name__}")
            reason = check_person(person, cfg.uv_size)
            if reason is None:
                x1, y1, x2, y2 = (float(v) for v in np.asarray(person.bbox, dtype=np.float64))
                if not float(person.score) > cfg.low_th_c:
                    reason = f"score {float(person.score):.3f} <= {cfg.low_th_c}"
                elif x2 - x1 < cfg.small_w or y2 - y1 < cfg.small_h:
                    reason = f"box {x2 - x1:.1f}x{y2 - y1:.1f} px smaller than {cfg.small_w}x{cfg.small_h}"
            if reason is not None:
                dropped[i] = reason
                continue
            kept.append(build_detection(person, time=frame_index, index=i, image_size=image_size, config=cfg))
        if dropped:
            logger.debug("frame %d: %d of %d people not tracked: %s", frame_index, len(dropped), len(people), dropped)
        return kept, dropped

    def _update(self, track: Track, det: DetectionRecord) -> None:
        """deep_sort ``Track.update`` as PHALP changes it (history, texture blend, counters)."""
        cfg = self.config
        track.history.append(_without_uv(det))
        if len(track.history) > cfg.track_history:
            del track.history[0]
        if det.uv is not None:
            old = track.pred_uv if track.pred_uv is not None else _unseen(cfg.uv_size)
            track.pred_uv = blend_texture(old, det.uv, det.conf, cfg.alpha)
        elif track.pred_uv is not None:
            track.pred_uv = blend_texture(track.pred_uv, _unseen(cfg.uv_size), det.conf, cfg.alpha)
        track.hits += 1
        track.time_since_update = 0
        if track.is_tentative and track.hits >= cfg.n_init:
            track.state = TrackState.CONFIRMED

    def _predict(self, tracks: list[Track]) -> None:
        """One prediction batch (PHALP ``accumulate_vectors``): pose predictor + location ridge."""
        if not tracks:
            return
        cfg = self.config
        poses = torch.from_numpy(np.stack([np.stack([h.pose for h in t.history]) for t in tracks]))
        times = torch.tensor([[h.time for h in t.history] for t in tracks], dtype=torch.int64)
        tsu = torch.tensor([t.time_since_update for t in tracks], dtype=torch.int64)
        readout: Literal["first_row", "per_row"] = "per_row" if cfg.pose_readout_per_row else "first_row"
        pred_pose = self.models.pose_predictor.predict_next(poses, times, tsu, readout=readout).numpy()
        for i, track in enumerate(tracks):
            track.pred_pose = pred_pose[i].astype(np.float32)
            track.pred_loca = predict_location(
                np.stack([h.loca for h in track.history]), times[i].numpy(), track.time_since_update, cfg
            )
            track.pred_appe = track.history[-1].appe

    def _initiate(self, det: DetectionRecord) -> int:
        cfg = self.config
        record = _without_uv(det)
        track = Track(
            track_id=self.next_id,
            state=TrackState.TENTATIVE,
            hits=1,
            age=1,
            time_since_update=0,
            history=[record] * cfg.track_history,
            pred_pose=det.pose.copy(),
            pred_loca=det.loca.copy(),
            pred_appe=det.appe,
            pred_uv=None if det.uv is None else det.uv.copy(),
        )
        if cfg.n_init <= 1:
            track.state = TrackState.CONFIRMED
        self.tracks.append(track)
        self.next_id += 1
        return track.track_id

    def _report(
        self, frame_index, n_people, detections, dropped, matches, unmatched_rows, unmatched_cols, new_ids,
        deleted, row_ids, terms,
    ) -> FrameTracks:
        cfg = self.config
        track_ids: list[int | None] = [None] * n_people
        assigned: list[int | None] = [None] * n_people
        match_pairs = [(row_ids[r], detections[c].index) for r, c in matches]
        for tid, idx in match_pairs:
            assigned[idx] = tid
        for tid, col in zip(new_ids, unmatched_cols):
            assigned[detections[col].index] = tid
        if self.tracks:
            self.tracked_frames.append(frame_index)
        reports: list[TrackReport] = []
        backfill: list[BackfillEntry] = []
        for track in self.tracks:
            if not track.is_confirmed:
                continue
            last = track.history[-1]
            matched_now = track.time_since_update == 0
            reports.append(
                TrackReport(
                    track_id=track.track_id,
                    bbox_tlwh=_tlwh(last.bbox_tlwh),
                    time_since_update=track.time_since_update,
                    detection_index=last.index if matched_now else None,
                    conf=float(last.conf),
                    extra=last.extra,
                )
            )
            if matched_now:
                track_ids[last.index] = track.track_id
                if track.hits == cfg.n_init:
                    frames = list(self.tracked_frames)
                    for j in range(1, cfg.n_init):
                        if j >= len(frames) or j >= len(track.history):
                            break
                        rec = track.history[-1 - j]
                        backfill.append(
                            BackfillEntry(
                                frame_index=frames[-1 - j],
                                detection_index=rec.index,
                                track_id=track.track_id,
                                bbox_tlwh=_tlwh(rec.bbox_tlwh),
                                conf=float(rec.conf),
                                extra=rec.extra,
                            )
                        )
        return FrameTracks(
            frame_index=frame_index,
            track_ids=track_ids,
            assigned_ids=assigned,
            dropped=dropped,
            tracks=reports,
            backfill=backfill,
            matches=match_pairs,
            unmatched_track_ids=[row_ids[r] for r in unmatched_rows],
            unmatched_detections=[detections[c].index for c in unmatched_cols],
            new_track_ids=new_ids,
            deleted_track_ids=deleted,
            row_track_ids=row_ids,
            cost=terms,
        )

    # -----------------------------------------------------------------------------------------
    # State as plain data

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue tracking, as plain Python values and NumPy arrays.

        Save it with `pipeline.tracking.state.save_state` (one .npz) or any serialiser that
        handles NumPy arrays; ``extra`` values must then be JSON-able.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": dataclasses.asdict(self.config),
            "next_id": self.next_id,
            "last_frame": self.last_frame,
            "tracked_frames": list(self.tracked_frames),
            "tracks": [_track_to_dict(t) for t in self.tracks],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (the config it was taken with must match this tracker's)."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise InputError(
                "tracker_state_invalid",
                f"expected tracker state {STATE_FORMAT} v{STATE_VERSION}, got {state.get('format')} v{state.get('version')}",
            )
        ours = dataclasses.asdict(self.config)
        theirs = state.get("config", {})
        diff = sorted(k for k in ours if k in theirs and _plain(theirs[k]) != _plain(ours[k]))
        if diff:
            raise InputError("tracker_state_invalid", f"tracker state was taken with another config: differs in {diff}")
        try:
            tracks = [_track_from_dict(d) for d in state["tracks"]]
            self.next_id = int(state["next_id"])
            self.last_frame = None if state["last_frame"] is None else int(state["last_frame"])
            self.tracked_frames = deque((int(f) for f in state["tracked_frames"]), maxlen=max(1, self.config.n_init))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("tracker_state_invalid", f"tracker state is incomplete or malformed: {exc!r}") from exc
        self.tracks = tracks


def collect_outputs(frames: Sequence[FrameTracks]) -> list[dict[str, Any]]:
    """Per-frame lists as PHALP's ``track()`` stores them (``tid``, ``bbox``, ``tracked_ids``,
    ``tracked_bbox``, ``tracked_time``, ``conf``, ``extra_data``), back-fills appended to their frames."""
    out: list[dict[str, Any]] = []
    where: dict[int, int] = {}
    for ft in frames:
        entry: dict[str, Any] = {k: [] for k in ("tid", "bbox", "tracked_ids", "tracked_bbox", "tracked_time", "conf", "extra_data")}
        entry["time"] = ft.frame_index
        where[ft.frame_index] = len(out)
        out.append(entry)
        for r in ft.tracks:
            entry["tid"].append(r.track_id)
            entry["bbox"].append(list(r.bbox_tlwh))
            entry["tracked_time"].append(r.time_since_update)
            entry["conf"].append(r.conf)
            entry["extra_data"].append(r.extra)
            if r.time_since_update == 0:
                entry["tracked_ids"].append(r.track_id)
                entry["tracked_bbox"].append(list(r.bbox_tlwh))
        for b in ft.backfill:
            if b.frame_index not in where:
                continue
            target = out[where[b.frame_index]]
            target["tid"].append(b.track_id)
            target["bbox"].append(list(b.bbox_tlwh))
            target["tracked_ids"].append(b.track_id)
            target["tracked_bbox"].append(list(b.bbox_tlwh))
            target["tracked_time"].append(0)
            target["conf"].append(b.conf)
            target["extra_data"].append(b.extra)
    return out


def _tlwh(box: np.ndarray) -> tuple[float, float, float, float]:
    """A (4,) x, y, w, h box as a tuple of floats."""
    return cast("tuple[float, float, float, float]", tuple(float(v) for v in box))


def _unseen(size: int) -> np.ndarray:
    out = np.zeros((4, size, size), dtype=np.float32)
    out[3] = -1
    return out


def _without_uv(det: DetectionRecord) -> DetectionRecord:
    return dataclasses.replace(det, uv=None)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _record_to_dict(r: DetectionRecord) -> dict[str, Any]:
    return {
        "time": r.time, "index": r.index, "bbox_tlwh": np.asarray(r.bbox_tlwh, dtype=np.float64),
        "conf": float(r.conf), "pose": r.pose, "loca": r.loca, "appe": r.appe, "extra": r.extra,
    }


def _record_from_dict(d: dict[str, Any]) -> DetectionRecord:
    return DetectionRecord(
        time=int(d["time"]), index=int(d["index"]), bbox_tlwh=np.asarray(d["bbox_tlwh"], dtype=np.float64),
        conf=np.float32(d["conf"]), pose=np.asarray(d["pose"], dtype=np.float32),
        loca=np.asarray(d["loca"], dtype=np.float32),
        appe=None if d.get("appe") is None else np.asarray(d["appe"], dtype=np.float32), extra=d.get("extra"),
    )


def _track_to_dict(t: Track) -> dict[str, Any]:
    return {
        "track_id": t.track_id, "state": t.state.value, "hits": t.hits, "age": t.age,
        "time_since_update": t.time_since_update, "history": [_record_to_dict(h) for h in t.history],
        "pred_pose": t.pred_pose, "pred_loca": t.pred_loca, "pred_appe": t.pred_appe, "pred_uv": t.pred_uv,
    }


def _track_from_dict(d: dict[str, Any]) -> Track:
    return Track(
        track_id=int(d["track_id"]), state=TrackState(d["state"]), hits=int(d["hits"]), age=int(d["age"]),
        time_since_update=int(d["time_since_update"]), history=[_record_from_dict(h) for h in d["history"]],
        pred_pose=np.asarray(d["pred_pose"], dtype=np.float32), pred_loca=np.asarray(d["pred_loca"], dtype=np.float32),
        pred_appe=None if d.get("pred_appe") is None else np.asarray(d["pred_appe"], dtype=np.float32),
        pred_uv=None if d.get("pred_uv") is None else np.asarray(d["pred_uv"]),
    )
