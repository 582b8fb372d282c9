"""Command line: ``python -m pipeline {weights,image,...}``.

Every command prints JSON on stdout (results, or ``{"error": ...}`` with a stable code) and
logs to stderr, so it can be driven from scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import PoseError
from .weights import CacheRoots

logger = logging.getLogger("pipeline")


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


def roots_from_args(args: argparse.Namespace) -> CacheRoots:
    return CacheRoots.under(args.cache_dir) if args.cache_dir else CacheRoots.from_env()


def _parse_box(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected a box as x1,y1,x2,y2, got {text!r}")
    try:
        return [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four numbers x1,y1,x2,y2, got {text!r}") from None


def cmd_weights(args: argparse.Namespace) -> dict[str, Any]:
    from . import weights

    roots = roots_from_args(args)
    files = weights.catalog(args.models or None)
    if args.fetch:
        try:
            weights.ensure(files, roots, download=not args.offline)
        except PoseError as exc:
            logger.error("%s", exc.message)
    statuses = weights.report(files, roots)
    problems: dict[str, str] = {}
    if args.verify:
        for st in statuses:
            if st.present:
                try:
                    weights.verify(st.file, st.found)  # type: ignore[arg-type]
                except PoseError as exc:
                    problems[st.file.key] = exc.message
    return {
        "roots": roots.to_dict(),
        "files": [
            {
                "key": st.file.key,
                "description": st.file.description,
                "present": st.present,
                "path": str(st.found or st.looked_in[0]),
                "downloadable": st.file.download is not None,
                **({} if st.present else {"looked_in": [str(p) for p in st.looked_in]}),
            }
            for st in statuses
        ],
        "missing": [st.file.key for st in statuses if not st.present],
        **({"verified": not problems, "problems": problems} if args.verify else {}),
    }


def cmd_image(args: argparse.Namespace) -> dict[str, Any]:
    from .image import run_image

    return run_image(
        args.photo,
        boxes=args.boxes,
        roots=roots_from_args(args),
        device=args.device,
        dtype=args.dtype,
        download=not args.offline,
        vertices=args.vertices,
    )


def cmd_video(args: argparse.Namespace) -> dict[str, Any] | None:
    from .result_stream import iter_json_document
    from .runner import VideoRunner

    if args.vertices and args.out_dir is None:
        raise PoseError("vertices_npz_only", "vertices are written to the NPZ only: add --out-dir DIR", status=400)
    detector_options: dict[str, Any] = {}
    chunk_size = args.chunk_size
    if args.profile is not None:
        # configs/ sits beside pipeline/ in this repository; imported only when asked for
        from configs.profiles import get_profile

        profile = get_profile(args.profile)
        detector_options = {
            "score_thresh": profile.score_thresh,
            "stage_score_thresh": profile.stage_score_thresh,
            **profile.detector_options(),
        }
        chunk_size = chunk_size or profile.video_chunk_size
    runner = VideoRunner.from_cache(
        roots_from_args(args),
        device=args.device,
        dtype=args.dtype,
        download=not args.offline,
        chunk_size=chunk_size or 8,
        detector_options=detector_options,
    )
    if args.out_dir is not None:
        files = runner.run_to(args.clip, args.out_dir, vertices=args.vertices, progress=not args.no_progress)
        out = files.write_json(args.out) if args.out is not None else None
        return {
            "out": None if out is None else str(out),
            "files": {k: str(v) for k, v in vars(files).items() if isinstance(v, Path)},
            "frames": files.frames,
            "tracks": files.tracks,
        }
    with tempfile.TemporaryDirectory(prefix=".pose-video-", dir=args.out.parent if args.out else None) as tmp:
        files = runner.run_to(args.clip, tmp, vertices=False, progress=not args.no_progress)
        if args.out is None:  # the document to stdout, streamed
            for part in iter_json_document(files.jsonl, files.meta):
                sys.stdout.buffer.write(part)
            sys.stdout.flush()
            return None
        files.write_json(args.out)
    return {"out": str(args.out), "frames": files.frames, "tracks": files.tracks}


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import check_format, export_to

    fmt = check_format(args.format)
    names = export_to(
        args.result, fmt, args.out, args.track, roots=roots_from_args(args), include_unconfirmed=args.include_unconfirmed
    )
    zipped = args.track is None and fmt != "mot"
    return {"out": str(args.out), "format": fmt, "zip": zipped, "files": names}


def cmd_keys_new(args: argparse.Namespace) -> dict[str, Any]:
    from .auth import check_client_id, key_line, new_key

    client = check_client_id(args.client)
    key = new_key()  # shown this once: only its digest is kept, in the line below
    return {
        "client": client,
        "admin": args.admin,
        "key": key,
        "line": key_line(client, key, args.admin),
        "next": "give the key to the client; add the line to the keys file ($POSE_SERVICE_KEYS_FILE) on every node",
    }


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

    p = sub.add_parser("weights", help="report which model files are present; --fetch downloads the missing public ones")
    _add_common(p)
    p.add_argument("--fetch", action="store_true", help="download missing public files (never the licensed SMPL model)")
    p.add_argument("--verify", action="store_true", help="also read every present file (checksum, format) and report problems")
    p.add_argument("--models", nargs="*", choices=["hmr2", "vitdet", "phalp"], help="only these models (default: all)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("image", help="people in one image -> JSON (SMPL, camera, keypoints)")
    _add_common(p)
    p.add_argument("photo", type=Path, help="image file (JPEG, PNG, ...)")
    p.add_argument(
        "--boxes",
        nargs="+",
        type=_parse_box,
        default=None,
        metavar="X1,Y1,X2,Y2",
        help="person boxes in image pixels; without them the detector finds the people",
    )
    p.add_argument("--vertices", action="store_true", help="include the 6890 mesh vertices per person")
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
        "--chunk-size", type=int, default=None, help="frames decoded and run through the models together (default: 8)"
    )
    p.add_argument(
        "--profile",
        choices=["full", "tiny"],
        default=None,
        help="use a serving profile's detector settings (thresholds, input size, proposals), "
        "so the result matches the service's; the weights still come from --cache-dir",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_video)

    p = sub.add_parser("export", help="tracked people of a video result -> AMASS NPZ, BVH, GLB or MOTChallenge text")
    p.add_argument(
        "result", type=Path,
        help="the result JSON document (video --out), or a folder with result.jsonl and result-meta.json (video --out-dir)",
    )
    p.add_argument("--format", required=True, metavar="{amass,bvh,glb,mot}", help="amass: SMPL NPZ; bvh; glb: skinned mesh + animation; mot: MOTChallenge boxes")
    p.add_argument("--track", type=int, default=None, help="only this track id (default: every track, as a zip; mot: one file)")
    p.add_argument("--out", type=Path, required=True, help="file to write (a .zip for every track of amass/bvh/glb)")
    p.add_argument("--include-unconfirmed", action="store_true", help="also detections never confirmed as a track (negative ids)")
    p.add_argument(
        "--cache-dir", type=Path, default=None,
        help="model caches (4DHumans/, phalp/, iopath_cache/) under this folder; amass/bvh/glb read the SMPL model there",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("keys", help="client keys for the service")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="a fresh random key for CLIENT, printed once, and the keys-file line that accepts it")
    k.add_argument("client", help="client id (letters, digits, '.', '_', '-'): the owner of the jobs made with the key")
    k.add_argument("--admin", action="store_true", help="the key sees and manages every client's jobs")
    k.set_defaults(func=cmd_keys_new)

    p = sub.add_parser("tiny", help="write tiny random-weight models in the official cache layouts (for tests and demos)")
    p.add_argument("dest", type=Path, help="folder to hold 4DHumans/, phalp/, iopath_cache/")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
    except PoseError as exc:
        json.dump(exc.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        logger.error("%s", exc)
        return 2
    if result is not None:  # None: the command wrote its own output
        json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
