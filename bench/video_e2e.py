"""Videos end to end, in one run (tiny profile, local Ray):

1. frames/s for the same clip in process (`pipeline.video.runner.VideoRunner`, no Ray) and through
   HTTP (upload -> job -> poll -> result), and the ratio: the serving overhead;
2. total frames/s through HTTP with 1, 2 and 4 jobs submitted at once (``max_active`` = the
   largest concurrency, so they all run together and their crops share the regressor's batches).

    python bench/video_e2e.py
    python bench/video_e2e.py --frames 24 --concurrency 1 2 4 8 --num-cpus 4

Frames/s through HTTP is measured from the upload's start to the last result fetched, so it
includes upload, probing, queueing, polling (every 0.2 s) and the result download. Every process
runs torch with one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

logger = logging.getLogger("video_e2e")


def write_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """Two drawn figures walking across a light background (what the tiny detector finds)."""
    import av
    import numpy as np

    from pipeline.tiny.vitdet import draw_figures

    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        for i in range(frames):
            img = draw_figures([w // 5 + 6 * i, 4 * w // 5 - 6 * i], size=size)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:, :, ::-1]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


async def run_jobs(url: str, clip: bytes, n: int) -> float:
    """Seconds for ``n`` uploads of ``clip`` submitted at once, each to its fetched result."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one() -> None:
            resp = await client.post("/v1/videos", files={"video": ("clip.mp4", clip, "video/mp4")})
            resp.raise_for_status()
            job_id = resp.json()["id"]
            while True:
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                if job["state"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['state']}: {job['error']}")
            (await client.get(f"/v1/jobs/{job_id}/result")).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="frames in the clip")
    parser.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray
    import torch
    from ray import serve

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import runner_settings, tiny_roots
    from pipeline.video.runner import VideoRunner

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="video-bench-"))
    roots = tiny_roots(tmp / "tiny")
    clip_path = write_clip(tmp / "clip.mp4", args.frames, tuple(args.size))
    clip = clip_path.read_bytes()

    runner = VideoRunner.from_cache(roots, device="cpu", download=False, **runner_settings())
    runner.run(clip_path)  # warm-up
    start = time.perf_counter()
    runner.run(clip_path)
    local = args.frames / (time.perf_counter() - start)
    del runner

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8766})
        url = "http://127.0.0.1:8766"
        app_args = AppArgs(
            profile="tiny",
            tiny_dir=str(tmp / "tiny"),
            data_dir=str(tmp / "data"),
            jobs={"max_active": max(args.concurrency), "max_queued": max(args.concurrency)},
        )
        serve.run(build_app(app_args), name="pose", route_prefix="/")
        asyncio.run(run_jobs(url, clip, 1))  # warm-up: first calls, lazy imports
        rates = {n: n * args.frames / asyncio.run(run_jobs(url, clip, n)) for n in args.concurrency}
        served = rates.get(1) or args.frames / asyncio.run(run_jobs(url, clip, 1))
        print_table(
            f"frames/s, one {args.frames}-frame {args.size[1]}x{args.size[0]} clip, detection + HMR2 + appearance + "
            "tracking (tiny, CPU, 1 thread per process)",
            ["path", "frames/s", "ratio to in-process"],
            [["in-process (VideoRunner)", local, 1.0], ["HTTP job (Ray Serve)", served, served / local]],
        )
        print()
        print_table(
            "total frames/s through HTTP with concurrent jobs (upload -> poll -> result)",
            ["concurrent jobs", "total frames/s", "per job frames/s", "vs 1 job"],
            [[n, r, r / n, r / rates[args.concurrency[0]]] for n, r in rates.items()],
        )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
