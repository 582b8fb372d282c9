"""Reading a video result frame by frame, and gathering its people into tracks.

A result can be far larger than memory allows (an hour of video is millions of people-frames),
so frames are read one at a time from whichever form the result has: the `VideoResult` JSON
document (a file, read with an incremental parser), the published pair ``result.jsonl`` +
``result-meta.json`` that `pipeline.video.results` writes, or an in-memory document.

Tracks are gathered in one pass into a `TrackSpool`: rows go to one file per track on disk,
so only one track's arrays are ever held at once, whatever the number of tracks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import numpy as np

from pipeline.video.results import JSONL_NAME, META_NAME

from ..errors import InputError, PoseError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultFiles:
    """The published files of a streamed result (names may carry a suffix, as jobs' do)."""

    jsonl: Path
    meta: Path


ResultSource = Union[str, os.PathLike, ResultFiles, Mapping[str, Any], Any]


class ResultReader:
    """Frames of a result, one at a time; ``meta`` (``video``, ``tracks``, ...) once they are read.

    ``source``: a `VideoResult` (or its JSON-ready dict), a path to its JSON document, a folder
    holding ``result.jsonl`` and ``result-meta.json``, or a `ResultFiles`.
    """

    def __init__(self, source: ResultSource) -> None:
        self.meta: dict[str, Any] = {}
        self._frames: Any
        if isinstance(source, ResultFiles):
            self._init_files(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                self._init_files(ResultFiles(path / JSONL_NAME, path / META_NAME))
            elif path.is_file():
                self._frames = lambda: _document_frames(path, self.meta)
            else:
                raise InputError("result_not_found", f"expected a result JSON file or a folder with {JSONL_NAME}, got {str(path)!r}", status=404)
        elif isinstance(source, Mapping):
            self.meta = {k: v for k, v in source.items() if k != "frames"}
            self._frames = lambda: iter(source.get("frames") or [])
        elif hasattr(source, "model_dump") and hasattr(source, "frames"):  # a VideoResult
            self.meta = source.model_dump(mode="json", exclude={"frames"})
            self._frames = lambda: (f.model_dump(mode="json") for f in source.frames)
        else:
            raise TypeError(f"expected a result path, ResultFiles, dict or VideoResult, got {type(source).__name__}")

    def _init_files(self, files: ResultFiles) -> None:
        for p in (files.jsonl, files.meta):
            if not p.is_file():
                raise InputError("result_not_found", f"result file {p.name} not found in {str(p.parent)!r}", status=404)
        try:
            self.meta = json.loads(files.meta.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError("result_unreadable", f"{files.meta.name} is not JSON: {exc}") from exc
        self._frames = lambda: _jsonl_frames(files.jsonl)

    def frames(self) -> Iterator[dict[str, Any]]:
        """Each frame as a JSON dict (``frame_index``, ``time_s``, ``people``), in order."""
        for frame in self._frames():
            if not isinstance(frame, dict) or not isinstance(frame.get("people"), list) or "frame_index" not in frame:
                raise InputError("result_unreadable", "expected frames with frame_index and people, got a frame without them")
            yield frame

    @property
    def fps(self) -> float | None:
        fps = (self.meta.get("video") or {}).get("fps")
        return float(fps) if fps else None


def _jsonl_frames(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise InputError("result_unreadable", f"{path.name} line {number} is not JSON: {exc}") from exc


READ_BLOCK = 1 << 16  # characters read at a time from a JSON document


class _Scanner:
    """Incremental JSON text: values are decoded with the stdlib decoder from a sliding buffer."""

    def __init__(self, f: Any, block: int = READ_BLOCK) -> None:
        self.f = f
        self.block = block
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(self.block)
        if not chunk:
            self.eof = True
            return False
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise ValueError(f"expected one of {chars!r} at offset {self.pos}, got {c or 'the end'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except ValueError:
                if self._more():
                    continue
                raise
            # a number the buffer cut in two ("1." of "1.25", "3e" of "3e-4") decodes as its
            # first part: read on until what follows it is in the buffer
            nxt = end
            while nxt < len(self.buf) and self.buf[nxt] in " \t\r\n":
                nxt += 1
            cut = nxt == len(self.buf) or (isinstance(value, (int, float)) and self.buf[nxt] in ".eE+-0123456789")
            if cut and self._more():
                continue
            self.pos = end
            return value


def _document_frames(path: Path, meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The frames of a `VideoResult` JSON file, streamed; its other keys land in ``meta``."""
    try:
        with open(path, encoding="utf-8") as f:
            s = _Scanner(f, READ_BLOCK)
            s.expect("{")
            if s.peek() == "}":
                return
            while True:
                key = s.value()
                s.expect(":")
                if key == "frames":
                    s.expect("[")
                    if s.peek() == "]":
                        s.pos += 1
                    else:
                        while True:
                            yield s.value()
                            if s.expect(",]") == "]":
                                break
                else:
                    meta[key] = s.value()
                if s.expect(",}") == "}":
                    return
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("result_unreadable", f"{path.name} is not a result JSON document: {exc}") from exc


# -- tracks ----------------------------------------------------------------------------------------

# One row per detection of a track: frame, time, box, score, 24 rotations, betas, t_full.
_ROW = (("frame_index", 1), ("time_s", 1), ("bbox", 4), ("score", 1), ("rotations", 24 * 9), ("betas", 10), ("t_full", 3))
_ROW_WIDTH = sum(n for _, n in _ROW)


@dataclass
class TrackArrays:
    """Every detection of one track, in frame order (float64; the result's frames and units)."""

    track_id: int
    frame_index: np.ndarray  # (N,) int64, video frame numbers (0-based)
    time_s: np.ndarray  # (N,) presentation times, seconds
    bbox: np.ndarray  # (N, 4) x1, y1, x2, y2, pixels
    score: np.ndarray  # (N,) detection scores (NaN where the result has none)
    rotations: np.ndarray  # (N, 24, 3, 3) global_orient then the 23 body joints, camera frame
    betas: np.ndarray  # (N, 10)
    t_full: np.ndarray  # (N, 3) metres, camera frame

    def __len__(self) -> int:
        return len(self.frame_index)


def person_row(frame: Mapping[str, Any], person: Mapping[str, Any]) -> np.ndarray:
    """A person of a frame as one spool row (see `_ROW`)."""
    smpl, cam = person["smpl"], person["camera"]
    score = person.get("score")
    rot = np.concatenate([np.reshape(smpl["global_orient"], (1, 9)), np.reshape(smpl["body_pose"], (23, 9))])
    return np.concatenate(
        [
            [float(frame["frame_index"]), float(frame.get("time_s", 0.0))],
            np.reshape(person["bbox"], 4),
            [np.nan if score is None else float(score)],
            rot.reshape(-1),
            np.reshape(smpl["betas"], 10),
            np.reshape(cam["t_full"], 3),
        ]
    ).astype(np.float64)


class TrackSpool:
    """Detections gathered per track in one pass, kept on disk (one file per track) past a few
    thousand rows, read back one track at a time."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, max_rows: int = 4096) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="pose-export-") if folder is None else None
        self.folder = Path(self._tmp.name if self._tmp is not None else folder)  # type: ignore[arg-type]
        self.max_rows = max_rows
        self._pending: dict[int, list[np.ndarray]] = {}
        self._rows = 0
        self._last_frame: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def add(self, track_id: int, row: np.ndarray) -> None:
        frame = row[0]
        if self._last_frame.get(track_id) == frame:
            logger.warning("track %d has two detections in frame %d; the first is kept", track_id, int(frame))
            return
        self._last_frame[track_id] = frame
        self._pending.setdefault(track_id, []).append(row)
        self.counts[track_id] = self.counts.get(track_id, 0) + 1
        self._rows += 1
        if self._rows >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        for track_id, rows in self._pending.items():
            with open(self._path(track_id), "ab") as f:
                f.write(np.stack(rows).tobytes())
        self._pending.clear()
        self._rows = 0

    def _path(self, track_id: int) -> Path:
        return self.folder / f"track{track_id}.f64"

    def track_ids(self) -> list[int]:
        """Confirmed ids ascending, then the unconfirmed (negative) ones from -1 down."""
        ids = list(self.counts)
        return sorted(i for i in ids if i >= 0) + sorted((i for i in ids if i < 0), reverse=True)

    def load(self, track_id: int) -> TrackArrays:
        self.flush()
        data = np.fromfile(self._path(track_id), dtype=np.float64).reshape(-1, _ROW_WIDTH)
        data = data[np.argsort(data[:, 0], kind="stable")]
        cols: dict[str, np.ndarray] = {}
        start = 0
        for name, width in _ROW:
            cols[name] = data[:, start : start + width]
            start += width
        return TrackArrays(
            track_id=track_id,
            frame_index=cols["frame_index"][:, 0].astype(np.int64),
            time_s=cols["time_s"][:, 0],
            bbox=cols["bbox"],
            score=cols["score"][:, 0],
            rotations=cols["rotations"].reshape(-1, 24, 3, 3),
            betas=cols["betas"],
            t_full=cols["t_full"],
        )

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "TrackSpool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def frame_people(
    reader: ResultReader, *, track: int | None = None, include_unconfirmed: bool = False
) -> Iterator[tuple[Mapping[str, Any], list[tuple[Mapping[str, Any], int]]]]:
    """Every frame, in order, with its wanted (person, id) pairs (possibly none).

    Detections never confirmed as a track (``track_id`` null) are left out unless
    ``include_unconfirmed``; then each is a track of its own with a negative id (-1, -2, ... in
    order of appearance). With ``track`` only that id's detections.
    """
    unconfirmed = 0
    for frame in reader.frames():
        wanted: list[tuple[Mapping[str, Any], int]] = []
        for person in frame["people"]:
            tid = person.get("track_id")
            if tid is None:
                if not include_unconfirmed:
                    continue
                unconfirmed += 1
                key = -unconfirmed
            else:
                key = int(tid)
            if track is None or key == track:
                wanted.append((person, key))
        yield frame, wanted


def tracked_people(
    reader: ResultReader, *, track: int | None = None, include_unconfirmed: bool = False
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any], int]]:
    """(frame, person, id) of every wanted detection, in frame order (see `frame_people`)."""
    for frame, wanted in frame_people(reader, track=track, include_unconfirmed=include_unconfirmed):
        for person, key in wanted:
            yield frame, person, key


def spool_tracks(
    reader: ResultReader, spool: TrackSpool, *, track: int | None = None, include_unconfirmed: bool = False
) -> None:
    """One pass over the frames: every wanted detection (`tracked_people`) into ``spool``."""
    for frame, person, key in tracked_people(reader, track=track, include_unconfirmed=include_unconfirmed):
        try:
            spool.add(key, person_row(frame, person))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("result_unreadable", f"frame {frame.get('frame_index')}: a person without SMPL parameters or camera: {exc}") from exc


def require_track(spool: TrackSpool, track: int | None, reader: ResultReader) -> list[int]:
    """The ids to export: ``track`` (if it is in the result) or all; `track_not_found` otherwise."""
    ids = spool.track_ids()
    if track is not None and track not in ids:
        raise track_not_found(track, reader)
    if not ids:
        raise PoseError("no_tracks", "the result has no tracks to export (no person was confirmed as a track)", status=404)
    return ids


def track_not_found(track: int, reader: ResultReader) -> PoseError:
    """`track_not_found` (404), naming the result's track ids (the first 100)."""
    known = [t["track_id"] for t in reader.meta.get("tracks") or []][:100]
    return PoseError(
        "track_not_found", f"expected one of the result's track ids, got {track}", status=404, details={"track_id": track, "tracks": known}
    )
