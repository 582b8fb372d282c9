"""ViTDet throughput: images/s through the whole detector (resize, network, post-processing)
for batch sizes 1, 2, 4 on the current device and dtype.

    python bench/vitdet.py                          # tiny model, written to a temp dir
    python bench/vitdet.py --profile full           # the real checkpoint from detectron2's cache
    python bench/vitdet.py --profile full-random    # ViTDet-H sizes, random weights (no download)
    python bench/vitdet.py --dtype float16 --profile full-random

Frames are 720x1280 BGR (a typical video frame). ``full-random`` costs the same compute as the
real checkpoint, so it measures speed where the 2.6 GB file is not available.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, time_call  # noqa: E402

from pipeline.models.vitdet.config import vitdet_h  # noqa: E402
from pipeline.models.vitdet.model import VitDetModel  # noqa: E402
from pipeline.models.vitdet.predictor import VitDetPredictor  # noqa: E402
from pipeline.tiny.vitdet import calibration_figure, write_tiny_vitdet  # noqa: E402
from pipeline.weights import CacheRoots  # noqa: E402


def build(profile: str, device: str | None, dtype: str, tmp: str) -> VitDetPredictor:
    if profile == "tiny":
        roots = CacheRoots.under(tmp)
        write_tiny_vitdet(roots)
        return VitDetPredictor.from_cache(roots, device=device, dtype=dtype, download=False)
    if profile == "full":
        return VitDetPredictor.from_cache(CacheRoots.from_env(), device=device, dtype=dtype)
    torch.manual_seed(0)
    return VitDetPredictor(VitDetModel(vitdet_h()), device=device, dtype=dtype)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["tiny", "full", "full-random"], default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--batch-sizes", default="1,2,4")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--masks", action="store_true", help="also paste full-resolution masks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        predictor = build(args.profile, args.device, args.dtype, tmp)
        frame = calibration_figure(720, 1280)
        rows = []
        base = None
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            frames = [frame] * bs

            def run() -> None:
                predictor(frames, masks=args.masks)
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()

            seconds = time_call(run, min_seconds=args.min_seconds)
            ips = bs / seconds
            base = base or ips
            rows.append([bs, ips, seconds * 1000.0, ips / base])
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if predictor.device.type == "cuda" else ""
        title = (
            f"ViTDet {args.profile} on {predictor.device} ({torch.cuda.get_device_name() if predictor.device.type == 'cuda' else 'cpu'}), "
            f"{predictor.dtype}, 720x1280 frames{mem}"
        )
        print_table(title, ["batch", "images/s", "ms/batch", "vs batch 1"], rows)


if __name__ == "__main__":
    main()
