"""Video workers on a local three-node Ray cluster: autoscaling by the job queue, and jobs/min.

A real cluster on this machine (tests/cluster_helpers.py: one head for the Ingress, two worker
nodes for the video workers, each in its own mount namespace), a PostgreSQL job store and a
shared storage folder, the tiny profile.

1. Autoscaling: the video workers start at one replica (``min_replicas: 1, max_replicas: 2``,
   one job per worker); a burst of jobs is submitted at once and every few seconds the table
   shows queued and running jobs against the running Tracker replicas, as
   `serve status` reports them, until the queue is empty and the idle worker is removed again.
2. Throughput: the same burst with a fixed one and two workers; jobs per minute.

    python bench/video_scale.py [--jobs 6] [--frames 24] [--job-store postgresql://...]

The PostgreSQL server defaults to ``$POSE_TEST_POSTGRES_URL`` or the local one; the benchmark
works in a schema of its own and drops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import print_table  # noqa: E402
from pg_helpers import isolated_schema, server_url  # noqa: E402

logger = logging.getLogger("video_scale")


def running_replicas(app: str = "pose", deployment: str = "Tracker") -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def submit(client, clip: bytes, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        resp = client.post("/v1/videos", files={"video": ("clip.mp4", clip, "video/mp4")})
        resp.raise_for_status()
        ids.append(resp.json()["id"])
    return ids


def states(client, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for job_id in ids:
        state = client.get(f"/v1/jobs/{job_id}").json()["state"]
        out[state] = out.get(state, 0) + 1
    return out


def deploy(args_dict: dict) -> None:
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from deployments.app import AppArgs, build_app

    serve.run(build_app(AppArgs(**args_dict)), name="pose", route_prefix="/",
              logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--job-store", default=server_url())
    parser.add_argument("--sample-s", type=float, default=3.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import httpx
    import ray
    from cluster_helpers import CLUSTER_ENV, ingress_and_two_video_nodes
    from ray import serve
    from serve_helpers import free_port
    from videos import crossing_video

    from pipeline.tiny.cache import tiny_roots

    work = Path(tempfile.mkdtemp(prefix="video-scale-"))
    tiny_roots(work / "tiny")
    clip = crossing_video(work / "clip.mp4", n=args.frames).read_bytes()
    cleanup = contextlib.ExitStack()  # the schema is dropped at the very end
    store_url, schema = cleanup.enter_context(isolated_schema(args.job_store, "pose_bench"))
    os.environ.update(CLUSTER_ENV)
    cluster = ingress_and_two_video_nodes(work)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        base = {
            "profile": "tiny", "tiny_dir": str(work / "tiny"), "data_dir": str(work / "shared"),
            "placement": {"ingress": {"pose_ingress": 0.01}, "tracker": {"pose_video": 1.0}},
        }
        jobs = {"max_active": 1, "max_queued": 64, "lease_s": 10.0, "job_store": store_url}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            # 1. autoscaling by the queue
            deploy({**base, "jobs": {**jobs, "autoscaling": {
                "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                "upscale_delay_s": 2, "downscale_delay_s": 15, "metrics_interval_s": 1, "look_back_period_s": 2,
            }}})
            ids = submit(client, clip, args.jobs)
            rows, start, idle_since = [], time.monotonic(), None
            while True:
                s = states(client, ids)
                replicas = running_replicas()
                rows.append((f"{time.monotonic() - start:.0f}", s.get("queued", 0), s.get("running", 0),
                             s.get("succeeded", 0), replicas))
                done = s.get("succeeded", 0) + s.get("failed", 0) == len(ids)
                if done and idle_since is None:
                    idle_since = time.monotonic()
                if done and (replicas <= 1 or time.monotonic() - idle_since > 90):
                    break
                time.sleep(args.sample_s)
            print_table(
                f"{args.jobs} jobs of {args.frames} frames submitted at once; video workers autoscale 1..2 "
                "(one job per worker) by the job queue",
                ["t s", "queued", "running", "succeeded", "Tracker replicas"],
                rows,
            )
            print()
            # 2. jobs/min with a fixed number of workers
            rates = []
            for workers in (1, 2):
                deploy({**base, "jobs": {**jobs, "workers": workers}})
                while running_replicas() != workers:
                    time.sleep(1)
                t0 = time.monotonic()
                ids = submit(client, clip, args.jobs)
                while states(client, ids).get("succeeded", 0) < len(ids):
                    time.sleep(1)
                minutes = (time.monotonic() - t0) / 60
                rates.append((workers, args.jobs / minutes))
            print_table(
                f"jobs/min, {args.jobs} jobs of {args.frames} frames, tiny profile, 1 CPU per node",
                ["video workers", "jobs/min", "ratio to 1 worker"],
                [(w, r, r / rates[0][1]) for w, r in rates],
            )
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.stop()
            cleanup.close()


if __name__ == "__main__":
    main()
