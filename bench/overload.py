"""Overload: a burst of image requests far past capacity, through the served application (tiny
profile, local Ray), with the Ingress's load shedding at its bound and, for comparison, off.

Prints, per setting, how many requests were answered (200), shed (503 ``overloaded`` with
``Retry-After``), answered otherwise, and left unanswered within the client's timeout, with the
latency percentiles of each. Shedding works when nothing is unanswered and the answered ones
finish within the bound (plus their own service time).

    python bench/overload.py
    python bench/overload.py --requests 600 --concurrency 300 --max-wait 10 --timeout 120
    python bench/overload.py --settings 10 off     # 'off': no bound (the queue just grows)
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

OFF = 1e9  # a bound no request reaches


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def burst(url: str, body: bytes, n: int, concurrency: int, timeout: float) -> list[tuple[str, float, str | None]]:
    """(outcome, seconds, Retry-After) for ``n`` requests sent ``concurrency`` at a time."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[str, float, str | None]] = []

    async def one(client: httpx.AsyncClient) -> None:
        async with sem:
            start = time.perf_counter()
            try:
                r = await client.post("/v1/images", content=body, headers={"content-type": "image/png"})
            except httpx.TimeoutException:
                out.append(("unanswered", time.perf_counter() - start, None))
                return
            except httpx.HTTPError as exc:
                out.append((f"error {type(exc).__name__}", time.perf_counter() - start, None))
                return
            took = time.perf_counter() - start
            if r.status_code == 200:
                out.append(("answered", took, None))
            elif r.status_code == 503 and r.headers.get("content-type", "").startswith("application/json") \
                    and r.json()["error"]["code"] == "overloaded":
                out.append(("shed", took, r.headers.get("retry-after")))
            else:
                out.append((f"HTTP {r.status_code}", took, None))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(n)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=120.0, help="the client's timeout per request, seconds")
    parser.add_argument("--settings", nargs="+", default=["10", "off"],
                        help="max_image_wait_s values to run, 'off' for no bound")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import cv2
    import httpx
    import ray
    from ray import serve

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import tiny_roots
    from pipeline.tiny.vitdet import calibration_figure

    tmp = Path(tempfile.mkdtemp(prefix="overload-bench-"))
    tiny_roots(tmp)
    body = cv2.imencode(".png", calibration_figure())[1].tobytes()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows: list[list[Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8766, "request_timeout_s": 300})
        url = "http://127.0.0.1:8766"
        for setting in args.settings:
            bound = OFF if setting == "off" else float(setting)
            serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(tmp), data_dir=str(tmp / "data"),
                                        limits={"max_image_wait_s": bound})), name="pose", route_prefix="/")
            asyncio.run(burst(url, body, 8, 4, args.timeout))  # warm-up: the rate is measured from these
            started = time.perf_counter()
            results = asyncio.run(burst(url, body, args.requests, args.concurrency, args.timeout))
            wall = time.perf_counter() - started
            load = httpx.get(f"{url}/v1/info", timeout=60).json()["load"]["images"]
            for outcome in ("answered", "shed", "unanswered") + tuple(sorted({o for o, _, _ in results} - {"answered", "shed", "unanswered"})):
                took = [t for o, t, _ in results if o == outcome]
                retry = sorted({int(r) for o, _, r in results if o == outcome and r is not None})
                rows.append([
                    setting, outcome, len(took), _pct(took, 0.5), _pct(took, 0.9), _pct(took, 0.99), max(took, default=None),
                    f"{retry[0]}-{retry[-1]}" if retry else "", len(results) / wall, load["rate_per_s"],
                ])
    finally:
        serve.shutdown()
        ray.shutdown()
    print_table(
        f"{args.requests} image requests at concurrency {args.concurrency}, client timeout {args.timeout:.0f} s "
        f"(tiny profile, {args.num_cpus} CPUs)",
        ["max_image_wait_s", "outcome", "requests", "p50 s", "p90 s", "p99 s", "max s", "Retry-After s",
         "requests/s (all outcomes)", "served rate/s (Ingress)"],
        rows,
    )


if __name__ == "__main__":
    main()
