"""Replicas over a video run: each deployment's replica-count changes, and the video workers'
autoscaling by the job queue.

``steady`` (item: autoscaling that does not flap): serve_config.yaml deployed as written
(tests/config_deploy.py: ``ray start`` head, ``serve run`` of the file with only its HTTP port
changed, ``POSE_SERVICE_PROFILE=tiny``), one long video job at a steady rate (drawn figures,
small frames), and ``serve.status()`` polled all along. Printed: every replica-count change of
every deployment (time, from -> to), the controller's own scaling log lines (with the ongoing
requests it decided on), and a summary table. Under steady load each deployment changes at most
once.

    python bench/video_scale.py steady [--frames 1500] [--jobs 1] [--size 360x480] [--num-cpus 2]

``--jobs 2``: two jobs at once, one video worker runs both (``jobs.max_active: 2``): a load of
two jobs' calls, for which the model stages may take one more replica, once.

``queue``: video workers on a local three-node Ray cluster (tests/cluster_helpers.py: one head
for the Ingress, two worker nodes for the video workers, each in its own mount namespace), a
PostgreSQL job store and a shared storage folder, the tiny profile.

1. Autoscaling: the video workers start at one replica (``min_replicas: 1, max_replicas: 2``,
   one job per worker); a burst of jobs is submitted at once and every few seconds the table
   shows queued and running jobs against the running Tracker replicas, as
   `serve status` reports them, until the queue is empty and the idle worker is removed again.
2. Throughput: the same burst with a fixed one and two workers; jobs per minute.

    python bench/video_scale.py queue [--jobs 6] [--frames 24] [--job-store postgresql://...]

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
from typing import Any

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


class ReplicaWatch:
    """Each deployment's replica count over a run, from ``serve.status()``: every change.

    The count is the replicas Serve keeps for the deployment (starting, running, updating),
    not those stopping: a scale-up shows the moment the controller decides it, a scale-down the
    moment it starts draining a replica."""

    KEPT = ("STARTING", "UPDATING", "RECOVERING", "RUNNING")

    def __init__(self, app: str = "pose") -> None:
        self.app = app
        self.start = time.monotonic()
        self.counts: dict[str, int] = {}
        self.first: dict[str, int] = {}
        self.changes: list[tuple[float, str, int, int]] = []  # (t s, deployment, from, to)

    def poll(self) -> dict[str, int]:
        from ray import serve

        now = time.monotonic() - self.start
        deployments = serve.status().applications[self.app].deployments
        for name, status in deployments.items():
            n = sum(int(status.replica_states.get(state, 0)) for state in self.KEPT)
            before = self.counts.get(name)
            if before is None:
                self.first[name] = n
            elif n != before:
                self.changes.append((now, name, before, n))
                logger.info("%6.1f s  %s: %d -> %d replicas", now, name, before, n)
            self.counts[name] = n
        return dict(self.counts)

    def report(self, limits: dict[str, tuple[int, int]] | None = None) -> None:
        print_table(
            "replica-count changes, per deployment",
            ["t s", "deployment", "from -> to"],
            [(f"{t:.1f}", name, f"{a} -> {b}") for t, name, a, b in self.changes] or [("-", "(none)", "-")],
        )
        print()
        rows = []
        for name in sorted(self.counts):
            mine = [c for c in self.changes if c[1] == name]
            lo, hi = (limits or {}).get(name, ("", ""))
            rows.append((
                name, f"{lo}..{hi}" if limits else "", self.first[name], self.counts[name], len(mine),
                sum(1 for c in mine if c[3] > c[2]), sum(1 for c in mine if c[3] < c[2]),
                max([self.first[name], *(c[3] for c in mine)]),
            ))
        print_table(
            "summary",
            ["deployment", "min..max", "first", "last", "changes", "up", "down", "peak"],
            rows,
        )


def controller_scaling_lines(session_dir: Path) -> list[str]:
    """The Serve controller's "Upscaling/Downscaling ... Current ongoing requests" log lines."""
    lines: list[str] = []
    for log in sorted((session_dir / "logs" / "serve").glob("controller_*.log")):
        lines += [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if "scaling Deployment" in ln]
    return lines


def steady_run(args: argparse.Namespace) -> None:
    """serve_config.yaml as written; long jobs at a steady rate; each deployment's replica changes."""
    import httpx
    import ray
    from config_deploy import deployed_file, file_deployments
    from videos import walking_video

    h, w = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="video-steady-"))
    clip = walking_video(work / "steady.mp4", args.frames, (h, w))
    limits = {
        name: (d["autoscaling_config"]["min_replicas"], d["autoscaling_config"]["max_replicas"])
        for name, d in file_deployments().items()
        if "autoscaling_config" in d
    }
    with deployed_file(work / "run", num_cpus=args.num_cpus) as served:
        session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
        with httpx.Client(base_url=served.url, timeout=300) as client:
            watch = ReplicaWatch()
            watch.poll()
            ids = []
            for _ in range(args.jobs):
                resp = client.post("/v1/videos", files={"video": ("steady.mp4", clip.read_bytes(), "video/mp4")})
                resp.raise_for_status()
                ids.append(resp.json()["id"])
            started = time.monotonic()
            jobs: list[dict[str, Any]] = []
            while True:
                watch.poll()
                jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
                if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
                    break
                time.sleep(args.sample_s)
            seconds = time.monotonic() - started
            after = time.monotonic() + args.after_s
            while time.monotonic() < after:
                time.sleep(args.sample_s)
                watch.poll()
        print(f"{args.jobs} job(s) of {args.frames} frames ({w}x{h}) at once, tiny profile, serve_config.yaml as "
              f"written, {args.num_cpus:g} CPUs: {[j['state'] for j in jobs]} in {seconds:.0f} s "
              f"({args.jobs * args.frames / seconds:.1f} frames/s)")
        print()
        watch.report(limits)
        print()
        print("the Serve controller's scaling decisions:")
        for line in controller_scaling_lines(session_dir):
            print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["steady", "queue"], default="steady")
    parser.add_argument("--jobs", type=int, default=None, help="jobs submitted at once (steady: 1, queue: 6)")
    parser.add_argument("--frames", type=int, default=None, help="frames per job (steady: 1500, queue: 24)")
    parser.add_argument("--size", default="360x480", help="steady: frame height x width")
    parser.add_argument("--num-cpus", type=float, default=2, help="steady: CPUs of the Ray head")
    parser.add_argument("--after-s", type=float, default=0.0, help="steady: keep watching this long after the job")
    parser.add_argument("--job-store", default=None, help="queue: PostgreSQL server (default: the tests' one)")
    parser.add_argument("--sample-s", type=float, default=None, help="seconds between samples (steady: 0.5, queue: 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # each replica change as it happens
    if args.mode == "steady":
        args.frames = args.frames or 1500
        args.jobs = args.jobs or 1
        args.sample_s = args.sample_s or 0.5
        steady_run(args)
    else:
        args.frames = args.frames or 24
        args.jobs = args.jobs or 6
        args.sample_s = args.sample_s or 3.0
        args.job_store = args.job_store or server_url()
        queue_run(args)


def queue_run(args: argparse.Namespace) -> None:
    """Video workers following a burst of jobs on a three-node cluster, then jobs/min."""
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
            watch = ReplicaWatch()
            while True:
                s = states(client, ids)
                watch.poll()
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
            watch.report()
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
