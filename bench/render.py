"""Frames per second of the overlay renderer at 720p, with 1 and 5 people, on the CPU (and CUDA when present).

One frame's cost as a video overlay pays it: the SMPL layer on the stored parameters, the
z-buffered rasterization of every person's 13,776 faces, shading, compositing over the frame
and the track ids written beside the people (encoding not included). The body model is the
project's synthetic tiny SMPL (the same vertex and face counts as SMPL), so no licensed file is
needed; people stand about 500 px (one) or 380 px (five) tall, as in a typical clip.

    python bench/render.py [--frames 10] [--people 1 5] [--devices cpu cuda] [--side-view]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

from pipeline.render.overlay import OverlayRenderer, RenderConfig  # noqa: E402
from pipeline.tiny.hmr2 import write_tiny_hmr2  # noqa: E402
from pipeline.weights import CacheRoots  # noqa: E402

logger = logging.getLogger("bench.render")

HEIGHT, WIDTH = 720, 1280
FOCAL = 5000.0 / 256.0 * WIDTH  # HMR2's full-image focal length for a 1280-px-wide frame


def people_in_frame(n: int, frame: int) -> list[dict]:
    """n upright people side by side, walking a little from frame to frame."""
    rng = np.random.default_rng(frame)
    flip = np.diag([1.0, -1.0, -1.0])
    depth = FOCAL * 1.75 / (500.0 if n == 1 else 380.0)  # metres: a 1.75 m body that many pixels tall
    half_width = WIDTH / 2.0 * depth / FOCAL
    xs = [0.0] if n == 1 else np.linspace(-0.75 * half_width, 0.75 * half_width, n)
    out = []
    for i, x in enumerate(xs):
        pose = np.repeat(np.eye(3)[None], 23, axis=0) + rng.normal(0.0, 0.02, (23, 3, 3))
        out.append({
            "person_index": i,
            "track_id": i + 1,
            "smpl": {"global_orient": flip.tolist(), "body_pose": pose.tolist(), "betas": [0.0] * 10},
            "camera": {"t_full": [float(x) + 0.01 * frame, 0.1, depth * (1 + 0.05 * i)], "focal_length_full": FOCAL},
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10, help="timed frames per row (after one warm-up frame)")
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--side-view", action="store_true", help="also draw the side panel (a 2560x720 frame)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    image = np.full((HEIGHT, WIDTH, 3), 110, np.uint8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        roots = CacheRoots.under(tmp)
        write_tiny_hmr2(roots)
        for device in devices:
            renderer = OverlayRenderer.from_cache(roots, device=device, download=False, config=RenderConfig(side_view=args.side_view))
            for n in args.people:
                drawn = renderer.frame(image, people_in_frame(n, 0))  # warm-up
                if (drawn[:, :WIDTH] != image).any(axis=2).mean() < 0.02 * n:
                    raise SystemExit(f"the {n} people were not drawn: nothing to time")
                seconds = []
                for frame in range(1, args.frames + 1):
                    people = people_in_frame(n, frame)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    renderer.frame(image, people)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds.append(time.perf_counter() - started)
                ms = 1000.0 * float(np.mean(seconds))
                rows.append((n, device, ms, 1000.0 / ms))
                logger.info("%d people on %s: %.1f ms/frame", n, device, ms)
    view = "frame + side view" if args.side_view else "frame"
    print_table(f"overlay rendering, {WIDTH}x{HEIGHT} ({view}), {args.frames} frames per row, {torch.get_num_threads()} CPU threads",
                ["people", "device", "ms/frame", "fps"], rows)


if __name__ == "__main__":
    main()
