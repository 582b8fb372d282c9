"""HMR2 throughput: crops/s through the network for several batch sizes.

    python bench/hmr2_batch.py                  # tiny model, written to a temp dir
    python bench/hmr2_batch.py --profile full   # the real checkpoint from the 4D-Humans cache

The ratio column is throughput relative to batch size 1 (the per-request baseline of a
server without dynamic batching).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, time_call  # noqa: E402

from pipeline.models.hmr2.predictor import HMR2Predictor  # noqa: E402
from pipeline.weights import CacheRoots  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per batch size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        if args.profile == "tiny":
            from pipeline.tiny.hmr2 import write_tiny_hmr2

            roots = CacheRoots.under(tmp)
            write_tiny_hmr2(roots)
        else:
            roots = CacheRoots.from_env()
        predictor = HMR2Predictor.from_cache(roots, device=args.device, dtype=args.dtype, max_batch=max(args.batch_sizes))
    rng = np.random.default_rng(0)
    rows, base = [], None
    for bs in args.batch_sizes:
        crops = rng.normal(size=(bs, 3, 256, 256)).astype(np.float32)

        def run() -> None:
            predictor.forward_crops(crops, vertices=False)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize()

        seconds = time_call(run, min_seconds=args.seconds)
        rate = bs / seconds
        base = base or rate
        rows.append([bs, rate, 1000 * seconds / bs, rate / base])
    print_table(
        f"HMR2 ({args.profile}) on {predictor.device} {args.dtype}, torch threads {torch.get_num_threads()}",
        ["batch", "crops/s", "ms/crop", "ratio vs batch 1"],
        rows,
    )


if __name__ == "__main__":
    main()
