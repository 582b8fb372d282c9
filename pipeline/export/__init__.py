"""Exports of a video result's tracked people to animation and tracking tools.

One function per format (`amass_npz`, `bvh_text`, `glb_bytes`, `mot_lines`, `obj_files`,
`phalp_results`) and a dispatcher: `export` yields the files, one per track (OBJ: one per
detection; MOT and PHALP: one for all), `export_to` writes them to one file or a zip. The result is read frame by frame (`pipeline.export.source`); only one track's
arrays are held at a time. Units, axes and frame rates of each format: docs/exports.md.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_open
from ..errors import InputError
from ..weights import CacheRoots
from .amass import amass_npz
from .body import BodyModel, find_smpl, load_body
from .bvh import bvh_text
from .gltf import glb_bytes
from .meshes import obj_files
from .mot import mot_lines
from .phalp import phalp_pickle, phalp_results
from .source import ResultFiles, ResultReader, ResultSource, TrackSpool, require_track, spool_tracks, track_not_found

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "ExportFile", "ResultFiles", "amass_npz", "bvh_text", "check_format", "export", "export_to",
    "glb_bytes", "mot_lines", "needs_body", "obj_files", "phalp_results", "zipped",
]  # fmt: skip

# format -> (file extension, media type)
FORMATS: dict[str, tuple[str, str]] = {
    "amass": ("npz", "application/octet-stream"),
    "bvh": ("bvh", "text/plain"),
    "glb": ("glb", "model/gltf-binary"),
    "mot": ("txt", "text/plain"),
    "obj": ("obj", "model/obj"),
    "phalp": ("pkl", "application/octet-stream"),
}
ONE_FILE = ("mot", "phalp")  # every track in one file
PER_FRAME = ("obj",)  # a file per detection: always a zip


@dataclass(frozen=True)
class ExportFile:
    name: str  # e.g. "track-3.bvh"
    data: bytes
    media_type: str


def check_format(fmt: str) -> str:
    """``fmt`` if it is an export format, else `export_format_unknown` (422)."""
    if fmt not in FORMATS:
        raise InputError("export_format_unknown", f"expected a format in {sorted(FORMATS)}, got {fmt!r}", status=422)
    return fmt


def needs_body(fmt: str) -> bool:
    """Whether the format rigs the SMPL model (all but MOT and PHALP: rest joints, mesh, or the pelvis)."""
    return check_format(fmt) not in ONE_FILE


def zipped(fmt: str, track: int | None) -> bool:
    """Whether an export is a zip: OBJ always (a mesh per frame), MOT and PHALP never (one file
    for every track), the others when every track is asked for."""
    return check_format(fmt) in PER_FRAME or (track is None and fmt not in ONE_FILE)


def _track_name(track_id: int, ext: str) -> str:
    return f"track-{track_id}.{ext}" if track_id >= 0 else f"unconfirmed-{-track_id}.{ext}"


def export(
    source: ResultSource,
    fmt: str,
    track: int | None = None,
    *,
    body: BodyModel | None = None,
    roots: CacheRoots | None = None,
    include_unconfirmed: bool = False,
) -> Iterator[ExportFile]:
    """The files of one export: per track (``track``: only that one), or one MOT file.

    ``body``: the SMPL rig for amass/bvh/glb; without it the SMPL model is looked for in
    ``roots`` (default: the usual caches, `CacheRoots.from_env`) and `smpl_missing` raised if absent.
    Only confirmed tracks unless ``include_unconfirmed`` (see `pipeline.export.source`).
    """
    ext, media = FORMATS[check_format(fmt)]
    if needs_body(fmt) and body is None:
        body = load_body(find_smpl(roots or CacheRoots.from_env()))
    reader = ResultReader(source)
    if fmt in ONE_FILE:
        seen: set[int] = set()
        if fmt == "mot":
            data = "".join(mot_lines(reader, track=track, include_unconfirmed=include_unconfirmed, seen=seen)).encode()
        else:
            results = phalp_results(reader, track=track, include_unconfirmed=include_unconfirmed, seen=seen)
            if track is not None and track not in seen:
                raise track_not_found(track, reader)  # before pickling what would be thrown away
            data = phalp_pickle(results)
        if track is not None and track not in seen:
            raise track_not_found(track, reader)
        yield ExportFile(_track_name(track, ext) if track is not None else f"tracks.{ext}", data, media)
        return
    assert body is not None, "needs_body formats have a body by now"
    with TrackSpool() as spool:
        spool_tracks(reader, spool, track=track, include_unconfirmed=include_unconfirmed)
        for track_id in require_track(spool, track, reader):
            arrays = spool.load(track_id)
            if fmt == "obj":
                folder = _track_name(track_id, ext).removesuffix(f".{ext}")
                for name, text in obj_files(arrays, body, folder):
                    yield ExportFile(name, text.encode(), media)
                continue
            if fmt == "amass":
                data = amass_npz(arrays, body, video_fps=reader.fps)
            elif fmt == "bvh":
                data = bvh_text(arrays, body, video_fps=reader.fps).encode()
            else:
                data = glb_bytes(arrays, body, video_fps=reader.fps)
            yield ExportFile(_track_name(track_id, ext), data, media)


def export_to(
    source: ResultSource,
    fmt: str,
    out: str | Path,
    track: int | None = None,
    **options: object,
) -> list[str]:
    """`export` into ``out``: one file (one track; MOT; PHALP) or a zip of them (every track;
    OBJ, see `zipped`). Written atomically; returns the names of the files exported."""
    single = not zipped(fmt, track)
    names: list[str] = []
    with atomic_open(Path(out)) as f:
        if single:
            for item in export(source, fmt, track, **options):  # type: ignore[arg-type]
                f.write(item.data)
                names.append(item.name)
        else:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for item in export(source, fmt, track, **options):  # type: ignore[arg-type]
                    zf.writestr(item.name, item.data)
                    names.append(item.name)
    logger.info("exported %d file(s) as %s to %s", len(names), fmt, out)
    return names
