"""Command line: ``python -m pipeline {weights,image,...}``.

Every command prints JSON on stdout (results, or ``{"error": ...}`` with a stable code) and
logs to stderr, so it can be driven from scripts; ``weights`` prints a table unless given
``--json``. ``image`` and ``video`` check every model file they need before loading any model,
so a missing file stops them at once with one error naming them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import InputError, PoseError
from .image import DEFAULT_BATCH_SIZE, IMAGE_PATTERNS
from .weights import CacheRoots, FileStatus, WeightFile

if TYPE_CHECKING:
    from configs.profiles import Profile
    from pipeline.video.runner import VideoFiles, VideoRunner

logger = logging.getLogger("pipeline")


# The models whose files `weights` reports and fetches when none are named: the default graph's.
DEFAULT_MODELS = ("hmr2", "vitdet", "phalp")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="put all model caches (4DHumans/, phalp/, iopath_cache/) under this folder instead of "
        "the upstream defaults (~/.cache/4DHumans, ~/.cache/phalp, ~/.torch/iopath_cache)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="compute dtype; float16/bfloat16 use autocast and need a GPU (default: float32)",
    )
    p.add_argument("--offline", action="store_true", help="never download; fail if a file is missing")


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        choices=["full", "tiny"],
        default=None,
        help="run as the service's profile does (configs/profiles.py): its detector thresholds and options, "
        "people per image, frames per chunk; tiny also reads the tiny models from where the service writes "
        "them ($POSE_TINY_DIR, else ~/.cache/pose-service/tiny; written on first use) unless --cache-dir is given. "
        "Without it: the predictors' defaults and the models in --cache-dir or the upstream caches",
    )


def _add_detector(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        choices=["vitdet", "regnety"],
        default="vitdet",
        help="person detector: vitdet (ViTDet-H, 4D-Humans' default) or regnety (RegNetY-4GF Mask R-CNN, "
        "several times faster; demo.py --detector regnety). The service chooses with its detector argument",
    )


def profile_from_args(args: argparse.Namespace) -> Profile | None:
    """The serving profile named by ``--profile`` (None: none named)."""
    name = getattr(args, "profile", None)
    if name is None:
        return None
    # configs/ sits beside pipeline/ in this repository; imported only when asked for
    from configs.profiles import get_profile

    return get_profile(name)


def roots_from_args(args: argparse.Namespace) -> CacheRoots:
    """``--cache-dir``, else the tiny profile's models where the service keeps them, else the upstream caches."""
    if getattr(args, "cache_dir", None):
        return CacheRoots.under(args.cache_dir)
    profile = profile_from_args(args)
    if profile is not None and profile.tiny_models:
        from .tiny.cache import tiny_roots

        return tiny_roots(None, seed=profile.seed)  # as service.settings.ModelSettings.roots
    return CacheRoots.from_env()


def _parse_box(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected a box as x1,y1,x2,y2, got {text!r}")
    try:
        return [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four numbers x1,y1,x2,y2, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _opacity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Text:
    """A command's answer written for a person (`cmd_weights` without ``--json``): printed as it
    is; ``ok`` False exits 1, as a JSON report with ``"ok": false`` does."""

    text: str
    ok: bool = True


def cmd_weights(args: argparse.Namespace) -> dict[str, Any] | Text:
    """The model files: a table (key, status, size, where) or, with ``--json``, the JSON report.
    Not ok (exit status 1) when a file of the chosen models is missing, or fails ``--verify``;
    an import is not ok when it rejected a file or found none."""
    from . import weights

    roots = roots_from_args(args)
    if args.mirror:
        roots = dataclasses.replace(roots, mirrors=tuple(args.mirror))
    # without --models: the files the default graph loads (ViTDet as the detector)
    files = weights.catalog(args.models or DEFAULT_MODELS)
    if args.action == "import":
        if args.source is None:
            raise InputError("import_source_missing", "weights import needs PATH: a cache folder or an archive of one")
        imported = weights.import_weights(args.source, roots, files)
        if args.json:
            return imported
        table = _weights_text(weights.report(files, roots), roots, {})
        return Text(_import_text(imported) + "\n\n" + table, ok=imported["ok"])
    if args.source is not None:
        raise InputError("unexpected_argument", f"{str(args.source)!r}: only `weights import` takes a PATH")
    forgotten = weights.DigestLock(roots.lock).forget(args.forget) if args.forget else None
    if args.fetch:
        try:
            weights.ensure(files, roots, download=not args.offline)
        except PoseError as exc:
            logger.error("%s", exc.message)
    statuses = weights.report(files, roots)
    locked = weights.DigestLock(roots.lock).entries()
    problems: dict[str, str] = {}
    if args.verify:
        for st in statuses:
            if st.present:
                try:
                    weights.check_file(st, roots, deep=True)
                except PoseError as exc:
                    problems[st.file.key] = exc.message
    missing = [st.file.key for st in statuses if not st.present]
    if not args.json:
        text = _weights_text(statuses, roots, problems, verified=args.verify)
        if forgotten is not None:
            text += "\nforgotten in the lock file: " + (", ".join(forgotten) or "nothing recorded for " + ", ".join(args.forget))
        return Text(text, ok=not missing and not problems)
    return {
        "roots": roots.to_dict(),
        "lock": str(roots.lock) if roots.lock else None,
        "files": [
            {
                "key": st.file.key,
                "description": st.file.description,
                "present": st.present,
                "path": str(st.found or st.looked_in[0]),
                "downloadable": st.file.download is not None,
                "locked": st.lock_name in locked,
                **({} if st.present else {"looked_in": [str(p) for p in st.looked_in]}),
            }
            for st in statuses
        ],
        "missing": missing,
        "ok": not missing and not problems,
        **({"forgotten": forgotten} if forgotten is not None else {}),
        **({"verified": not problems, "problems": problems} if args.verify else {}),
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _weights_text(statuses: Sequence[FileStatus], roots: CacheRoots, problems: dict[str, str], *, verified: bool = False) -> str:
    """The table of `cmd_weights` (one row a file), then what to do about the files not there."""
    rows = [("FILE", "STATUS", "SIZE", "WHERE")]
    for st in statuses:
        if st.found is not None:
            status = "FAILED" if st.file.key in problems else "verified" if verified else "present"
            rows.append((st.file.key, status, _size(st.found.stat().st_size), str(st.found)))
        else:
            status = "missing" if st.file.download is not None else "missing (licensed)"
            rows.append((st.file.key, status, "-", str(st.looked_in[0])))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3]]).rstrip() for row in rows]
    missing = [st for st in statuses if not st.present]
    present = len(statuses) - len(missing)
    lines.append("")
    lines.append(f"{present} of {len(statuses)} present" + (f", {len(problems)} failed --verify" if problems else "") + f"; lock file: {roots.lock}")
    for key, message in problems.items():
        lines.append(f"- {key}: {message}" if not message.startswith(key) else f"- {message}")
    public = [st.file.key for st in missing if st.file.download is not None]
    if public:
        lines.append(
            f"missing public files ({', '.join(public)}): `python -m pipeline weights --fetch` downloads them "
            "(the service and the commands also download them when first needed, unless offline)"
        )
    for st in missing:
        if st.file.download is None:
            lines.append(f"{st.file.key}: {st.file.how_to_get or 'not downloadable'}")
            if len(st.looked_in) > 1:
                lines.append("    also looked for: " + "; ".join(str(p) for p in st.looked_in[1:]))
    if missing:
        lines.append("a copy held elsewhere (another machine's cache folder, an archive of one): `python -m pipeline weights import PATH`")
    return "\n".join(lines)


def _import_text(report: dict[str, Any]) -> str:
    """What `weights import` did, for a person (``--json``: the report itself)."""
    lines = [f"import from {report['source']}:"]
    lines += [f"  imported {i['key']}: {i['from']} -> {i['to']} ({i['how']})" for i in report["imported"]]
    lines += [f"  REJECTED {r['key']}: {r['from']}: {r['reason']}" for r in report["rejected"]]
    if report["present"]:
        lines.append(f"  already in place: {', '.join(p['key'] for p in report['present'])}")
    if report["missing"]:
        lines.append(f"  not in the source: {', '.join(report['missing'])}")
    if report.get("note"):
        lines.append(f"  {report['note']}")
    return "\n".join(lines)


def cmd_image(args: argparse.Namespace) -> dict[str, Any]:
    """One image (its document, as before) or a folder of them (``{"images": [...]}``), as
    files with ``--out`` / ``--out-dir``; meshes as OBJ files with ``--save-mesh``."""
    from .image import DEFAULT_BATCH_SIZE, ImageRunner, list_images

    folder = args.photo.is_dir()
    if folder and args.boxes is not None:
        raise InputError("unexpected_argument", "--boxes are one image's people: give a file, not a folder")
    sources: list[Path] = list_images(args.photo, args.file_type) if folder else [args.photo]
    profile = profile_from_args(args)
    batch_size = args.batch_size or (DEFAULT_BATCH_SIZE if profile is None else profile.regressor_batch.max_batch_size)
    runner = ImageRunner.from_cache(
        roots_from_args(args),
        detect=args.boxes is None,
        device=args.device,
        dtype=args.dtype,
        download=not args.offline,
        detector=args.detector,
        # as the served Detector and MeshRegressor run them
        detector_options=None if profile is None else profile.detector_settings(args.detector),
        max_people=None if profile is None else profile.limits.max_people,
        batch_size=batch_size,
    )
    names = _output_names(sources, args.photo if folder else args.photo.parent)
    entries: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    meshes = 0
    outcomes = runner.run(
        sources,
        boxes=None if args.boxes is None else [args.boxes],
        vertices=args.vertices,
        keep_vertices=args.save_mesh is not None,
        progress=folder and not args.no_progress,
        desc=args.photo.name,
    )
    for outcome in outcomes:
        name, stem = names[outcome.index]
        if outcome.error is not None:
            if not folder:
                raise outcome.error
            entries.append({"file": name, **outcome.error.to_dict()})
            summary.append(entries[-1])
            continue
        assert outcome.result is not None and outcome.output is not None
        entries.append({"file": name, **outcome.result})
        done: dict[str, Any] = {"file": name, "people": len(outcome.result["people"])}
        if args.out_dir is not None:
            done["out"] = str(_write_json(args.out_dir / f"{stem}.json", outcome.result))
        if args.save_mesh is not None:
            done["meshes"] = [str(p) for p in _write_meshes(args.save_mesh, stem, outcome.output, runner.faces)]
            meshes += len(done["meshes"])
        summary.append(done)
    failed = sum("error" in e for e in entries)
    if failed:
        logger.warning("%d of %d images could not be processed (their entries carry the error)", failed, len(entries))
    if meshes:
        logger.info("%d meshes written to %s", meshes, args.save_mesh)
    document: dict[str, Any] = {"images": entries} if folder else {k: v for k, v in entries[0].items() if k != "file"}
    if args.out is None and args.out_dir is None:
        return document  # as before for one image: its document on stdout
    if args.out is not None:
        _write_json(args.out, document)
    return {
        "out": None if args.out is None else str(args.out),
        "out_dir": None if args.out_dir is None else str(args.out_dir),
        "images": summary,
    }


def _output_names(sources: Sequence[Path], folder: Path) -> list[tuple[str, str]]:
    """Per image: its name in the result (relative to ``folder``) and the stem of the files
    written for it (``<stem>.json``, ``<stem>_<i>.obj``): the file's stem, or its whole name
    where two images share a stem (a.jpg and a.png)."""
    rel = [p.relative_to(folder).as_posix() if p.is_relative_to(folder) else p.name for p in sources]
    stems = [Path(r).with_suffix("").as_posix().replace("/", "_") for r in rel]
    shared = {s for s in stems if stems.count(s) > 1}
    return [(r, r.replace("/", "_") if s in shared else s) for r, s in zip(rel, stems)]


def _write_json(path: Path, document: Any) -> Path:
    from .atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, (json.dumps(document, indent=1) + "\n").encode())


def _write_meshes(folder: Path, stem: str, output: Any, faces: Any) -> list[Path]:
    """One Wavefront OBJ per person, ``<stem>_<i>.obj``, in the full-image camera frame as
    4D-Humans' demo writes them: SMPL vertices plus the camera translation ``t_full``."""
    from .atomic import atomic_write
    from .export.obj import obj_text

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(len(output)):
        vertices = output.vertices[i] + output.cam_t_full[i][None, :]
        written.append(atomic_write(folder / f"{stem}_{i}.obj", obj_text(vertices, faces).encode()))
    return written


def cmd_video(args: argparse.Namespace) -> dict[str, Any] | None:
    from pipeline.video.frame_range import FrameRange
    from pipeline.video.results import iter_json_document
    from pipeline.video.runner import VideoRunner

    if args.vertices and args.out_dir is None:
        raise PoseError("vertices_npz_only", "vertices are written to the NPZ only: add --out-dir DIR", status=400)
    frame_range = FrameRange.of(args.start_frame, args.end_frame, args.start_s, args.end_s)
    if frame_range is not None:  # a range past the video's end is refused before the models load
        from pipeline.video.decode import probe_video

        info = probe_video(args.clip)
        frame_range.check_video(info.frame_count, info.frame_count_exact, info.duration_s)
    profile = profile_from_args(args)
    # as the served video workers run a job: detector settings, frames per chunk, people per frame
    options: dict[str, Any] = {"chunk_size": 8, "detector": args.detector} if profile is None else profile.runner_options(args.detector)
    if args.chunk_size is not None:
        options["chunk_size"] = args.chunk_size
    runner = VideoRunner.from_cache(
        roots_from_args(args),
        device=args.device,
        dtype=args.dtype,
        download=not args.offline,
        **options,
    )
    if args.out_dir is not None:
        files = _noted(runner, runner.run_to(
            args.clip, args.out_dir, vertices=args.vertices, progress=not args.no_progress, frame_range=frame_range
        ))
        out = files.write_json(args.out) if args.out is not None else None
        return {
            "out": None if out is None else str(out),
            "files": {k: str(v) for k, v in vars(files).items() if isinstance(v, Path)},
            "frames": files.frames,
            "tracks": files.tracks,
        }
    with tempfile.TemporaryDirectory(prefix=".pose-video-", dir=args.out.parent if args.out else None) as tmp:
        files = _noted(runner, runner.run_to(
            args.clip, tmp, vertices=False, progress=not args.no_progress, frame_range=frame_range
        ))
        if args.out is None:  # the document to stdout, streamed
            for part in iter_json_document(files.jsonl, files.meta):
                sys.stdout.buffer.write(part)
            sys.stdout.flush()
            return None
        files.write_json(args.out)
    return {"out": str(args.out), "frames": files.frames, "tracks": files.tracks}


def _noted(runner: VideoRunner, files: VideoFiles) -> VideoFiles:
    """``files``, after saying what the tiny models are when they tracked no one."""
    from .tiny import TINY_NOTE, is_tiny_detector

    if files.tracks == 0 and is_tiny_detector(runner.detector):
        logger.warning("no one tracked: %s", TINY_NOTE)
    return files


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import check_format, export_to, zipped

    fmt = check_format(args.format)
    names = export_to(
        args.result, fmt, args.out, args.track, roots=roots_from_args(args), include_unconfirmed=args.include_unconfirmed
    )
    return {"out": str(args.out), "format": fmt, "zip": zipped(fmt, args.track), "files": names}


def cmd_render(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.render.overlay import OverlayRenderer, RenderConfig, render_image, render_video
    from pipeline.video.container import sniff_container

    from .errors import InputError
    from .imageio import sniff_format

    try:
        with open(args.media, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputError("input_unreadable", f"cannot read {args.media}: {exc.strerror}") from None
    kind = "image" if sniff_format(head) else "video" if sniff_container(head) else None
    if kind is None:
        raise InputError("media_unsupported", f"expected an image (JPEG, PNG, ...) or a video (MP4/MOV, Matroska/WebM, AVI), got {args.media}")
    suffix = args.out.suffix.lower()
    wanted = (".mp4",) if kind == "video" else (".png", ".jpg", ".jpeg")
    if suffix not in wanted:
        raise InputError("output_format_unsupported", f"the overlay of a {kind} is written as {' or '.join(wanted)}, got --out {args.out}")
    if kind == "video" and (args.per_person or args.full_frame):
        raise InputError("unexpected_argument", "--per-person and --full-frame are for images: a video's overlay is always the full frame")
    config = RenderConfig(side_view=args.side_view, labels=not args.no_labels, **({} if args.alpha is None else {"alpha": args.alpha}))
    renderer = OverlayRenderer.from_cache(roots_from_args(args), device=args.device, download=not args.offline, config=config)
    profile = profile_from_args(args)
    if kind == "image":
        summary = render_image(args.media, args.result, args.out, renderer, per_person=args.per_person, full_frame=args.full_frame or not args.per_person)
    else:  # frames decoded per chunk: the profile's, as the video workers render overlays
        summary = render_video(args.media, args.result, args.out, renderer,
                               chunk_size=8 if profile is None else profile.video_chunk_size, progress=not args.no_progress)
    return summary.to_dict()


def cmd_demo_media(args: argparse.Namespace) -> dict[str, Any]:
    from .tiny.media import write_demo_media

    written = write_demo_media(args.dest)
    return {name: str(path) for name, path in written.items()}


def cmd_tiny(args: argparse.Namespace) -> dict[str, Any]:
    from .tiny import write_tiny_caches

    roots = CacheRoots.under(args.dest)
    written = write_tiny_caches(roots, seed=args.seed)
    return {"roots": roots.to_dict(), "written": [str(p) for p in written]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="4D-Humans in one process: person detection (ViTDet), mesh recovery (HMR2.0), tracking (PHALP).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "weights",
        help="a table of the model files (present or missing, size, where; --json: a JSON report; exit 1 while one "
        "is missing); --fetch downloads the missing public ones; import PATH adopts them from a cache folder or archive",
    )
    _add_common(p)
    p.add_argument(
        "action", nargs="?", choices=["report", "import"], default="report",
        help="report (default): present / missing files; import: adopt the files found in PATH",
    )
    p.add_argument(
        "source", nargs="?", type=Path, default=None, metavar="PATH",
        help="import: a 4D-Humans, PHALP or detectron2 cache folder (or a folder holding them), "
        "hmr2_data.tar.gz, or a .tar/.tar.gz/.zip of a cache folder",
    )
    p.add_argument(
        "--mirror", action="append", default=None, metavar="URL",
        help="a mirror base URL serving the --cache-dir layout (<URL>/phalp/weights/...), tried before the "
        "published addresses; repeatable; $POSE_WEIGHTS_MIRRORS adds more",
    )
    p.add_argument(
        "--forget", nargs="+", metavar="KEY", default=None,
        help="drop these files' recorded size and sha256 from the lock file (after replacing a file on purpose)",
    )
    p.add_argument("--fetch", action="store_true", help="download missing public files (never the licensed SMPL model)")
    p.add_argument("--verify", action="store_true", help="also read every present file (checksum, format) and report problems")
    p.add_argument(
        "--models", nargs="*", choices=["hmr2", "vitdet", "regnety", "phalp"],
        help="these models' files (default: hmr2 vitdet phalp, what the service loads unless its detector is regnety)",
    )
    p.add_argument(
        "--json", action="store_true",
        help="print the JSON report (roots, lock file, each file's place and state, missing keys) instead of the table",
    )
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser(
        "image",
        help="people in an image, or in every image of a folder -> JSON (SMPL, camera, keypoints); --save-mesh: OBJ meshes",
    )
    _add_common(p)
    p.add_argument(
        "photo", type=Path, metavar="PATH",
        help="an image file (JPEG, PNG, ...), or a folder: its files matching --file-type, sorted by name",
    )
    p.add_argument(
        "--boxes",
        nargs="+",
        type=_parse_box,
        default=None,
        metavar="X1,Y1,X2,Y2",
        help="person boxes in image pixels (one image); without them the detector finds the people",
    )
    p.add_argument("--vertices", action="store_true", help="include the 6890 mesh vertices per person")
    _add_detector(p)
    p.add_argument(
        "--file-type", nargs="+", default=list(IMAGE_PATTERNS), metavar="PATTERN",
        help=f"a folder's image files (glob patterns; default: {' '.join(IMAGE_PATTERNS)}, as 4D-Humans' demo.py)",
    )
    p.add_argument(
        "--batch-size", type=_positive, default=None, metavar="N",
        help=f"person crops per HMR2 forward, from any images of a folder (default: the --profile's, else {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--out", type=Path, default=None,
        help="write the result JSON here (a folder's: {\"images\": [...]}) and print a summary (default: the result on stdout)",
    )
    p.add_argument("--out-dir", type=Path, default=None, help="write one result JSON per image here, <stem>.json")
    p.add_argument(
        "--save-mesh", type=Path, default=None, metavar="DIR",
        help="write each person's mesh to DIR as <image stem>_<i>.obj (camera frame: vertices + t_full), as demo.py --save_mesh",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (folders)")
    _add_profile(p)
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("video", help="people tracked through a video -> JSON (detection, HMR2, PHALP)")
    _add_common(p)
    p.add_argument("clip", type=Path, help="video file (MP4/MOV, Matroska/WebM, AVI)")
    p.add_argument("--out", type=Path, default=None, help="write the result JSON here (default: stdout)")
    p.add_argument(
        "--out-dir", type=Path, default=None,
        help="write every result file here: result.jsonl (one frame a line), result-meta.json, result.npz "
        "(and result-vertices.npz with --vertices)",
    )
    p.add_argument("--vertices", action="store_true", help="also keep the 6890 mesh vertices per person and frame (NPZ only; needs --out-dir)")
    p.add_argument(
        "--chunk-size", type=int, default=None,
        help="frames decoded and run through the models together (default: the --profile's, else 8)",
    )
    _add_detector(p)
    span = p.add_argument_group(
        "range", "process part of the video: frames or seconds (not both), start inclusive, end exclusive; "
        "the result keeps the whole video's frame indices and times",
    )
    span.add_argument("--start-frame", type=int, default=None, metavar="N", help="first frame index to process (0-based)")
    span.add_argument("--end-frame", type=int, default=None, metavar="N",
                      help="stop before this frame index (-1 or absent: to the last frame), as PHALP's video.end_frame")
    span.add_argument("--start-s", type=float, default=None, metavar="SECONDS",
                      help="first frame whose time stamp is at or after this (seconds from the stream start)")
    span.add_argument("--end-s", type=float, default=None, metavar="SECONDS", help="stop before the first frame at or after this")
    _add_profile(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_video)

    p = sub.add_parser(
        "export", help="tracked people of a video result -> AMASS NPZ, BVH, GLB, MOTChallenge text, OBJ meshes or PHALP's pickle"
    )
    p.add_argument(
        "result", type=Path,
        help="the result JSON document (video --out), or a folder with result.jsonl and result-meta.json (video --out-dir)",
    )
    p.add_argument(
        "--format", required=True, metavar="{amass,bvh,glb,mot,obj,phalp}",
        help="amass: SMPL NPZ; bvh; glb: skinned mesh + animation; mot: MOTChallenge boxes; "
        "obj: a zip of one mesh per track and frame (track-<id>/frame-<frame>.obj); phalp: PHALP's results pickle (joblib)",
    )
    p.add_argument(
        "--track", type=int, default=None,
        help="only this track id (default: every track, as a zip for amass/bvh/glb; mot and phalp: one file; obj: always a zip)",
    )
    p.add_argument("--out", type=Path, required=True, help="file to write (a .zip for obj, and for every track of amass/bvh/glb)")
    p.add_argument("--include-unconfirmed", action="store_true", help="also detections never confirmed as a track (negative ids)")
    p.add_argument(
        "--cache-dir", type=Path, default=None,
        help="model caches (4DHumans/, phalp/, iopath_cache/) under this folder; amass/bvh/glb/obj read the SMPL model there",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("render", help="draw a result's meshes over its image or video -> PNG / MP4 (no OpenGL)")
    _add_common(p)
    p.add_argument("media", type=Path, help="the image or video the result was made from")
    p.add_argument("result", type=Path, help="its result: the image's JSON; the video's JSON document (video --out) or folder (video --out-dir)")
    p.add_argument("--out", type=Path, required=True, help="overlay.png / .jpg for an image, overlay.mp4 (H.264) for a video")
    p.add_argument(
        "--side-view", action="store_true",
        help="a panel beside each frame (and each --per-person view): each person turned 90 degrees about its vertical axis",
    )
    p.add_argument(
        "--per-person", action="store_true",
        help="images: each person's crop beside it with its mesh, as <out stem>_<i>.png (4D-Humans demo.py's output), "
        "instead of the full frame",
    )
    p.add_argument("--full-frame", action="store_true", help="with --per-person: also the full frame with everyone at --out (demo.py --full_frame)")
    p.add_argument("--alpha", type=_opacity, default=None, help="mesh opacity over the frame, 0 to 1 (default: 0.85)")
    p.add_argument("--no-labels", action="store_true", help="do not write the track ids beside the people")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (videos)")
    _add_profile(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("tiny", help="write tiny random-weight models in the official cache layouts (for tests and demos)")
    p.add_argument("dest", type=Path, help="folder to hold 4DHumans/, phalp/, iopath_cache/")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser(
        "demo-media", help="write photo.jpg and clip.mp4 of the drawn test figures (what the tiny models find) to try the commands"
    )
    p.add_argument("dest", type=Path, help="folder to write them to (created if missing)")
    p.set_defaults(func=cmd_demo_media)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def needed_files(args: argparse.Namespace) -> list[WeightFile]:
    """The model files a command's models load: ``image`` HMR2.0's (the detector's too without
    ``--boxes``), ``video`` every model's; none for the others (``render`` asks for its two
    SMPL files in one call, which names both when they are missing)."""
    from . import weights

    func = getattr(args, "func", None)
    if func is cmd_image:
        return weights.catalog(["hmr2"] if args.boxes is not None else [args.detector, "hmr2"])
    if func is cmd_video:
        return weights.catalog([args.detector, "hmr2", "phalp"])
    return []


def check_model_files(args: argparse.Namespace) -> None:
    """Before any model loads: `WeightsError` naming every file the command needs that it cannot
    get (`pipeline.weights.check_available`: a licensed file, or offline any file, missing; a
    file in place that fails its checks). Each model's loader would stop at its own files only,
    after the models before it loaded (or downloaded). Missing public files it may download
    are left to the loaders, as before."""
    files = needed_files(args)
    if files:
        from . import weights

        weights.check_available(files, roots_from_args(args), download=not args.offline)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command, print its JSON (or its error, exit status 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_model_files(args)
        result = args.func(args)
    except PoseError as exc:
        json.dump(exc.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        logger.error("%s", exc)
        return 2
    if isinstance(result, Text):
        sys.stdout.write(result.text + "\n")
        return 0 if result.ok else 1
    if result is not None:  # None: the command wrote its own output
        json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    # A report that says it failed (``"ok": false``, e.g. an import that rejected a file) exits 1.
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0
