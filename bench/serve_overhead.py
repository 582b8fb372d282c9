"""Serving overhead and crop batching, in one run (tiny profile, local Ray):

1. images/s for the same image in process (ViTDet + HMR2 predictors, no Ray) and through
   ``POST /v1/images`` (HTTP proxy, ingress, detector and regressor deployments), and the ratio;
2. person crops/s through HTTP with client boxes (regressor only) with ``@serve.batch`` on
   (max_batch_size 32) and off (max_batch_size 1), at concurrency 1, 8 and 32.

    python bench/serve_overhead.py
    python bench/serve_overhead.py --images 8 --requests 64 --boxes 4 --num-cpus 4

Every process runs torch with one thread (``OMP_NUM_THREADS=1``), so the comparison is of the
serving path, not of thread pools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

logger = logging.getLogger("serve_overhead")


def in_process_images_per_s(roots: Any, image: Any, n: int) -> float:
    import numpy as np

    from pipeline.models.hmr2.predictor import HMR2Predictor
    from pipeline.models.vitdet.predictor import VitDetPredictor
    from pipeline.tiny.cache import runner_settings

    # the tiny profile's detector settings, as the served Detector runs them
    detector = VitDetPredictor.from_cache(roots, device="cpu", download=False, **runner_settings()["detector_options"])
    hmr2 = HMR2Predictor.from_cache(roots, device="cpu", download=False)

    def one() -> None:
        det = detector([image])[0]
        hmr2.predict(image, np.asarray(det.boxes[:64], dtype=np.float32))

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        one()
    return n / (time.perf_counter() - start)


async def http_rate(url: str, body: bytes, n: int, concurrency: int, params: dict[str, str]) -> tuple[float, int]:
    """Requests/s for ``n`` requests at ``concurrency``; also the number of people answered in total."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    people = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal people
        async with sem:
            r = await client.post("/v1/images", content=body, headers={"content-type": "image/png"}, params=params)
            r.raise_for_status()
            people += len(r.json()["people"])

    async with httpx.AsyncClient(base_url=url, timeout=600.0) as client:
        await one(client)  # warm-up
        people = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(n)))
        return n / (time.perf_counter() - start), people


def batching(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/v1/info", timeout=60).json()["deployments"]["regressor"]["batching"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images for the in-process vs HTTP comparison")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level (crops test)")
    parser.add_argument("--boxes", type=int, default=4, help="client boxes (crops) per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import cv2
    import ray
    import torch
    from ray import serve

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import tiny_roots
    from pipeline.tiny.vitdet import calibration_figure

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    roots = tiny_roots(tmp)
    image = calibration_figure()
    body = cv2.imencode(".png", image)[1].tobytes()
    h, w = image.shape[:2]
    boxes = json.dumps([[w * (0.1 + 0.2 * (i % 4)), h * 0.1, w * (0.3 + 0.2 * (i % 4)), h * 0.9] for i in range(args.boxes)])

    local = in_process_images_per_s(roots, image, args.images)

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8765})
        url = "http://127.0.0.1:8765"

        def deploy(batch: dict[str, Any]) -> None:
            serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(tmp), regressor_batch=batch)), name="pose", route_prefix="/")

        deploy({"max_batch_size": 32, "batch_wait_timeout_s": 0.01})
        served, _ = asyncio.run(http_rate(url, body, args.images, 1, {}))
        print_table(
            "images/s, same image, detector + HMR2 (tiny, CPU, 1 thread per process)",
            ["path", "images/s", "ratio to in-process"],
            [["in-process", local, 1.0], ["HTTP (Ray Serve)", served, served / local]],
        )

        rows = []
        for label, batch in (("on", {"max_batch_size": 32, "batch_wait_timeout_s": 0.01}),
                             ("off", {"max_batch_size": 1, "batch_wait_timeout_s": 0.0})):
            deploy(batch)
            for conc in args.concurrency:
                before = batching(url)
                rate, _ = asyncio.run(http_rate(url, body, args.requests, conc, {"boxes": boxes}))
                after = batching(url)
                batches = max(1, after["batches"] - before["batches"])
                mean = (after["items"] - before["items"]) / batches
                rows.append([label, conc, rate * args.boxes, mean, max(after["recent"][-batches:], default=0)])
        print_table(
            f"person crops/s through HTTP ({args.requests} requests x {args.boxes} client boxes, regressor only)",
            ["batching", "concurrency", "crops/s", "mean crops/batch", "max crops/batch"],
            rows,
        )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
