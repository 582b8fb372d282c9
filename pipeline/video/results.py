"""A video result written as it is made: per-chunk segments on disk, assembled without loading.

A video of any length must not be held in memory, neither while it is processed nor while its
result is served. The video loop hands every tracked frame to a `ResultWriter`. Frames wait in
the writer only while PHALP may still back-fill a track id into them (a track confirmed after
``n_init`` hits gives its id to its earlier detections); after that they are final and go to a
*segment*, one per chunk, under the job's work folder::

    seg-000012-a3.jsonl     final frames of chunk 12 written by attempt 3, one JSON object a line
    seg-000012-a3.npz       the same people as flat float32 arrays (vertices only here)

Segments are named by chunk number and attempt (fencing token), so a stale attempt that is still
running can only write files nobody reads: which segments make up the result is recorded in the
writer's `state` (plain data, part of the job's checkpoint), never inferred from the folder.

`finalize` turns the recorded segments into the published files, streaming, one segment at a
time: ``result.jsonl`` (the frames), ``result-meta.json`` (everything else of the document), and
``result.npz`` / ``result-vertices.npz`` (see `pipeline.video.npz` for the arrays). The full
JSON document is `iter_json_document` over those two files: the same document, byte for byte,
as serialising a `pipeline.schema.VideoResult` (compact separators).
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pipeline.atomic import atomic_open, atomic_write
from pipeline.models.hmr2.predictor import HMR2Output
from pipeline.schema import SCHEMA_VERSION, Frame, TrackSummary, VideoMeta, people_from_outputs

logger = logging.getLogger(__name__)

JSONL_NAME = "result.jsonl"
META_NAME = "result-meta.json"
NPZ_NAME = "result.npz"
NPZ_VERTICES_NAME = "result-vertices.npz"

# NPZ per-person arrays: name -> (HMR2Output field, per-row shape); order as `pipeline.video.npz`.
PERSON_ARRAYS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("bbox", "boxes", (4,)),
    ("global_orient", "global_orient", (3, 3)),
    ("body_pose", "body_pose", (23, 3, 3)),
    ("betas", "betas", (10,)),
    ("pred_cam", "pred_cam", (3,)),
    ("t_crop", "cam_t", (3,)),
    ("t_full", "cam_t_full", (3,)),
    ("focal_length_crop", "focal_length", ()),
    ("focal_length_full", "focal_length_full", ()),
    ("keypoints_2d", "keypoints_2d", (44, 2)),
    ("keypoints_3d", "keypoints_3d", (44, 3)),
)
# Per-person index arrays and per-frame arrays (dtype, per-row shape).
INDEX_ARRAYS = {"frame_index": np.int64, "person_index": np.int64, "track_id": np.int64, "score": np.float32}
FRAME_ARRAYS = {"frames_index": np.int64, "frames_time_s": np.float64}
VERTEX_SHAPE = (6890, 3)


@dataclass
class FrameRecord:
    """One tracked frame: the model outputs of its people and their (possibly later) track ids."""

    frame_index: int
    time_s: float
    output: HMR2Output  # one row per person, in detection order; vertices only when kept
    scores: np.ndarray  # (N,) detection scores
    track_ids: list[int | None]

    def to_state(self) -> dict[str, Any]:
        out = {f.name: getattr(self.output, f.name) for f in fields(self.output) if getattr(self.output, f.name) is not None}
        return {
            "frame_index": self.frame_index,
            "time_s": self.time_s,
            "output": out,
            "scores": np.asarray(self.scores, np.float32),
            "track_ids": [None if t is None else int(t) for t in self.track_ids],
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "FrameRecord":
        values = {f.name: d["output"].get(f.name) for f in fields(HMR2Output)}
        return cls(
            frame_index=int(d["frame_index"]),
            time_s=float(d["time_s"]),
            output=HMR2Output(**values),
            scores=np.asarray(d["scores"], np.float32),
            track_ids=list(d["track_ids"]),
        )


def frame_json(record: FrameRecord) -> str:
    """One frame of the result document as compact JSON (never with vertices)."""
    people = people_from_outputs(record.output, scores=record.scores, track_ids=record.track_ids, vertices=False)
    frame = Frame(frame_index=record.frame_index, time_s=round(float(record.time_s), 6), people=people)
    return json.dumps(frame.model_dump(mode="json"), separators=(",", ":"))


def frame_arrays(records: list[FrameRecord], *, vertices: bool) -> dict[str, np.ndarray]:
    """The NPZ rows of some frames (people in order), plus their per-frame rows."""
    rows = [(r, i) for r in records for i in range(len(r.output))]
    arrays: dict[str, np.ndarray] = {
        "frame_index": np.array([r.frame_index for r, _ in rows], np.int64),
        "person_index": np.array([i for _, i in rows], np.int64),
        "track_id": np.array([-1 if r.track_ids[i] is None else r.track_ids[i] for r, i in rows], np.int64),
        "score": np.array([r.scores[i] for r, i in rows], np.float32),
        "frames_index": np.array([r.frame_index for r in records], np.int64),
        "frames_time_s": np.array([round(float(r.time_s), 6) for r in records], np.float64),
    }
    for name, attr, shape in PERSON_ARRAYS:
        parts = [np.asarray(getattr(r.output, attr), np.float32) for r in records]
        stacked = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        if name == "global_orient":
            stacked = stacked.reshape(-1, 3, 3)
        arrays[name] = stacked.reshape(len(rows), *shape)
    if vertices:
        parts = [np.asarray(r.output.vertices, np.float32) for r in records if len(r.output)]
        arrays["vertices"] = np.concatenate(parts).reshape(len(rows), *VERTEX_SHAPE) if parts else np.zeros((0, *VERTEX_SHAPE), np.float32)
    return arrays


class ResultWriter:
    """Receives tracked frames in order; writes each chunk's final frames as one segment.

    ``vertices``: also keep the mesh (NPZ only). The writer's `state` is plain data; a writer
    built from it (`from_state`) continues exactly where that state was taken.
    """

    def __init__(self, work_dir: str | Path, token: int, *, vertices: bool = False) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.token = int(token)
        self.vertices = vertices
        self.pending: list[FrameRecord] = []
        self.segments: list[list[int]] = []  # runs [token, first chunk number, last chunk number]
        self.next_segment = 0
        self.frames_written = 0
        self.people_written = 0
        self.spans: dict[int, list[int]] = {}  # track id -> [first frame, last frame, frames seen]

    # -- receiving frames ----------------------------------------------------------------------
    def add(self, record: FrameRecord) -> None:
        self.pending.append(record)

    def backfill(self, frame_index: int, detection_index: int, track_id: int) -> None:
        """PHALP confirmed a track: an earlier detection gets its id (only frames still pending)."""
        for record in reversed(self.pending):
            if record.frame_index == frame_index:
                if detection_index < len(record.track_ids):
                    record.track_ids[detection_index] = int(track_id)
                return
            if record.frame_index < frame_index:
                return
        if self.pending and frame_index < self.pending[0].frame_index:
            logger.warning("back-fill for frame %d arrived after it was written; ignored", frame_index)

    def flush(self, settled_before: int | None) -> None:
        """Write, as one segment, every pending frame before ``settled_before`` (None: all)."""
        cut = len(self.pending) if settled_before is None else sum(1 for r in self.pending if r.frame_index < settled_before)
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        number = self.next_segment
        self.next_segment += 1
        stem = self.work_dir / f"seg-{number:06d}-a{self.token}"
        atomic_write(stem.with_suffix(".jsonl"), "".join(frame_json(r) + "\n" for r in ready).encode())
        arrays = frame_arrays(ready, vertices=self.vertices)
        with atomic_open(stem.with_suffix(".npz")) as f:
            np.savez(f, allow_pickle=True, **arrays)  # the default; spelled out so **arrays cannot fill it (mypy)
        if self.segments and self.segments[-1][0] == self.token and self.segments[-1][2] == number - 1:
            self.segments[-1][2] = number
        else:
            self.segments.append([self.token, number, number])
        for r in ready:
            for tid in r.track_ids:
                if tid is None:
                    continue
                span = self.spans.setdefault(int(tid), [r.frame_index, r.frame_index, 0])
                span[1] = r.frame_index
                span[2] += 1
        self.frames_written += len(ready)
        self.people_written += int(sum(len(r.output) for r in ready))

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "vertices": self.vertices,
            "pending": [r.to_state() for r in self.pending],
            "segments": [list(s) for s in self.segments],
            "next_segment": self.next_segment,
            "frames_written": self.frames_written,
            "people_written": self.people_written,
            "spans": [[tid, *span] for tid, span in sorted(self.spans.items())],
        }

    @classmethod
    def from_state(cls, work_dir: str | Path, token: int, state: Mapping[str, Any]) -> "ResultWriter":
        writer = cls(work_dir, token, vertices=bool(state["vertices"]))
        writer.pending = [FrameRecord.from_state(d) for d in state["pending"]]
        writer.segments = [[int(v) for v in s] for s in state["segments"]]
        writer.next_segment = int(state["next_segment"])
        writer.frames_written = int(state["frames_written"])
        writer.people_written = int(state["people_written"])
        writer.spans = {int(s[0]): [int(s[1]), int(s[2]), int(s[3])] for s in state["spans"]}
        return writer

    def segment_stems(self) -> Iterator[Path]:
        for token, first, last in self.segments:
            for number in range(first, last + 1):
                yield self.work_dir / f"seg-{number:06d}-a{token}"

    def tracks(self) -> list[TrackSummary]:
        return [
            TrackSummary(track_id=tid, first_frame=s[0], last_frame=s[1], num_frames=s[2])
            for tid, s in sorted(self.spans.items())
        ]

    # -- publishing ----------------------------------------------------------------------------
    def finalize(self, out_dir: str | Path, meta: VideoMeta, models: Mapping[str, str], *, suffix: str = "") -> dict[str, str]:
        """Write the published files into ``out_dir`` (each atomically); their names by format.

        ``suffix`` goes before each file's extension (e.g. the attempt token), so an attempt can
        only ever replace files of its own name.
        """
        self.flush(None)
        out_dir = Path(out_dir)
        names = {
            "jsonl": _suffixed(JSONL_NAME, suffix),
            "meta": _suffixed(META_NAME, suffix),
            "npz": _suffixed(NPZ_NAME, suffix),
        }
        with atomic_open(out_dir / names["jsonl"]) as f:
            for stem in self.segment_stems():
                with open(stem.with_suffix(".jsonl"), "rb") as seg:
                    while block := seg.read(1 << 20):
                        f.write(block)
        document_meta = {
            "schema_version": SCHEMA_VERSION,
            "video": meta.model_dump(mode="json"),
            "tracks": [t.model_dump(mode="json") for t in self.tracks()],
            "models": dict(models),
        }
        atomic_write(out_dir / names["meta"], json.dumps(document_meta, separators=(",", ":")).encode())
        self._write_npz(out_dir / names["npz"], document_meta, vertices=False)
        if self.vertices:
            names["npz_vertices"] = _suffixed(NPZ_VERTICES_NAME, suffix)
            self._write_npz(out_dir / names["npz_vertices"], document_meta, vertices=True)
        return names

    def _write_npz(self, path: Path, document_meta: Mapping[str, Any], *, vertices: bool) -> None:
        """The NPZ of `pipeline.video.npz`, streamed: each array's header, then every segment's rows."""
        people, frames = self.people_written, self.frames_written
        layout: list[tuple[str, np.dtype, tuple[int, ...]]] = [
            (name, np.dtype(dt), (people,)) for name, dt in INDEX_ARRAYS.items()
        ]
        layout += [(name, np.dtype(np.float32), (people, *shape)) for name, _, shape in PERSON_ARRAYS]
        layout += [(name, np.dtype(dt), (frames,)) for name, dt in FRAME_ARRAYS.items()]
        if vertices:
            layout.append(("vertices", np.dtype(np.float32), (people, *VERTEX_SHAPE)))
        with atomic_open(path) as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
            for name, dtype, shape in layout:
                with zf.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_2_0(
                        entry, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    )
                    rows = 0
                    for stem in self.segment_stems():
                        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as seg:
                            part = np.ascontiguousarray(seg[name], dtype=dtype)
                        rows += len(part)
                        entry.write(part.tobytes())
                    if rows != shape[0]:
                        raise RuntimeError(f"result segments hold {rows} rows of {name}, expected {shape[0]}")
            with zf.open("meta.npy", "w") as entry:
                np.lib.format.write_array(entry, np.array(json.dumps(dict(document_meta))), allow_pickle=False)

    def remove_segments(self) -> None:
        """Delete every segment file in the work folder (after the result is published)."""
        for path in self.work_dir.glob("seg-*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def iter_json_document(jsonl_path: str | Path, meta_path: str | Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The `VideoResult` JSON document from the published files, a few frames at a time."""
    meta = json.loads(Path(meta_path).read_bytes())
    head = {"schema_version": meta["schema_version"], "video": meta["video"]}
    yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"frames":['
    first = True
    buf: list[bytes] = []
    size = 0
    with open(jsonl_path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if not line:
                continue
            buf.append(line if first else b"," + line)
            first = False
            size += len(line)
            if size >= block:
                yield b"".join(buf)
                buf, size = [], 0
    if buf:
        yield b"".join(buf)
    tail = json.dumps({"tracks": meta["tracks"], "models": meta["models"]}, separators=(",", ":"))
    yield b"]," + tail[1:].encode()


def write_json_document(jsonl_path: str | Path, meta_path: str | Path, out: str | Path) -> Path:
    """`iter_json_document` into a file, atomically."""
    with atomic_open(Path(out)) as f:
        for part in iter_json_document(jsonl_path, meta_path):
            f.write(part)
    return Path(out)


def _suffixed(name: str, suffix: str) -> str:
    if not suffix:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}-{suffix}{dot}{ext}"
