"""Frames per second of PHALP tracking alone (no detector, no HMR2), for 1, 5 and 20 people per frame.

Inputs are synthetic people walking across a 720p frame, each with a UV texture, so every cue of
the cost (texture included) is computed. Models: the full-size architectures with random weights
(default), the tiny ones, or PHALP's files from the cache (``--weights cache``).

    python bench/tracker.py [--device cuda] [--weights random|tiny|cache] [--frames 20]
                            [--modes all decisive off]

Modes: ``all`` (default tracker: every texture pair under the gate encoded), ``decisive`` (only
the pairs the assignment needs; the bench checks its decisions equal ``all``'s frame by frame
when both run), ``off`` (no texture cue at all: not PHALP's decisions, the floor the pose
predictor and bookkeeping leave). Columns: ``x all`` = frames/s relative to mode ``all`` (the
reference's computation) at the same size; pairs asked / encoder inputs run per timed frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time

import numpy as np
import torch

from pipeline.models.phalp.encoder import PhalpAppearanceEncoder
from pipeline.models.phalp.predictor import PhalpPosePredictor
from pipeline.tracking import Tracker, TrackerModels
from pipeline.tracking.loading import tracker_models_from_cache
from pipeline.tracking.synthetic import sequence, walkers
from pipeline.weights import CacheRoots

logger = logging.getLogger("bench.tracker")


def build_models(kind: str, device: str) -> TrackerModels:
    if kind == "random":
        torch.manual_seed(0)
        return TrackerModels(PhalpPosePredictor().to(device).eval(), PhalpAppearanceEncoder().to(device).eval())
    if kind == "tiny":
        from pipeline.tiny.phalp import write_tiny_phalp

        roots = CacheRoots.under(tempfile.mkdtemp(prefix="tiny-phalp-"))
        write_tiny_phalp(roots)
        return tracker_models_from_cache(roots, device=device, download=False)
    return tracker_models_from_cache(CacheRoots.from_env(), device=device, download=False)


def frames_for(n_people: int, n_frames: int, seed: int = 0):
    """Synthetic frames; one texture per person reused across frames (keeps memory small)."""
    rng = np.random.default_rng(seed)
    textures = []
    for w in walkers(n_people, seed=seed):
        seen = rng.random((256, 256)) < 0.3
        tex = np.empty((4, 256, 256), np.float32)
        for c in range(3):
            tex[c] = np.where(seen, w.colour[c], 0)
        tex[3] = np.where(seen, 1, -1)
        textures.append(tex)
    out = []
    for frame, gt in sequence(n_people, n_frames, seed=seed, uv=False):
        people = [dataclasses.replace(p, uv=textures[g]) for p, g in zip(frame.people, gt)]
        out.append(dataclasses.replace(frame, people=people))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", choices=["random", "tiny", "cache"], default="random")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per setting (after 6 warm-up frames)")
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--modes", nargs="+", choices=["all", "decisive", "off"], default=["all", "decisive"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = build_models(args.weights, args.device)
    rows = []
    for n in args.people:
        frames = frames_for(n, 6 + args.frames)
        decisions: dict[str, list] = {}
        for mode in args.modes:
            if mode == "off":
                tracker = Tracker(TrackerModels(models.pose_predictor, None))
            else:
                tracker = Tracker(models, texture_pairs=mode)
            tracker.run(frames[:6])  # warm-up; tracks confirmed
            stats = getattr(tracker._texture, "stats", None)
            before = (stats.pairs, stats.maps_encoded) if stats is not None else (0, 0)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = tracker.run(frames[6:])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            decisions[mode] = [
                (f.matches, f.unmatched_track_ids, f.unmatched_detections, f.new_track_ids, f.deleted_track_ids)
                for f in out
            ]
            same = ""
            if mode == "decisive" and "all" in decisions:
                differ = sum(a != b for a, b in zip(decisions["all"], decisions["decisive"]))
                same = f"{differ}/{len(out)}"
            pairs = maps = 0.0
            if stats is not None:
                pairs = (stats.pairs - before[0]) / args.frames
                maps = (stats.maps_encoded - before[1]) / args.frames
            rows.append((n, mode, args.frames / elapsed, 1000 * elapsed / args.frames, len(tracker.tracks), pairs, maps, same))
    print(f"PHALP tracking only: weights={args.weights} device={args.device} threads={torch.get_num_threads()}")
    base = {n: fps for n, mode, fps, *_ in rows if mode == "all"}
    print(f"{'people/frame':>12} | {'mode':>8} | {'frames/s':>9} | {'x all':>6} | {'ms/frame':>9} | {'tracks':>6} | {'pairs/fr':>8} | {'enc/fr':>7} | {'differ':>6}")
    print(f"{'-' * 12}-+-{'-' * 8}-+-{'-' * 9}-+-{'-' * 6}-+-{'-' * 9}-+-{'-' * 6}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 6}")
    for n, mode, fps, ms, tracks, pairs, maps, same in rows:
        ratio = f"{fps / base[n]:.2f}" if n in base else ""
        print(f"{n:>12} | {mode:>8} | {fps:>9.2f} | {ratio:>6} | {ms:>9.1f} | {tracks:>6} | {pairs:>8.1f} | {maps:>7.1f} | {same:>6}")


if __name__ == "__main__":
    main()
