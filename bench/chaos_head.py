"""Head-node failure with Ray's GCS fault tolerance: the head's processes killed mid-job.

A local three-node cluster (tests/cluster_helpers.py) whose head keeps the GCS state in an
external Redis (``RAY_REDIS_ADDRESS``, default ``127.0.0.1:6379``, in a namespace of its own);
the job store in PostgreSQL and a shared storage folder. Jobs are submitted through the head's
HTTP proxy; while they run, every process of the head node is killed (SIGKILL, the head in its
own mount namespace) and the head is started again on the same port with the same Redis. The
table shows when the service answered again and how every job ended: none may be lost.

    python bench/chaos_head.py [--jobs 3] [--redis 127.0.0.1:6379] [--job-store postgresql://...]

The application is deployed by a short-lived driver process, as ``serve deploy`` would, so
nothing of this script depends on the head staying up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import print_table  # noqa: E402
from pg_helpers import isolated_schema, server_url  # noqa: E402

logger = logging.getLogger("chaos_head")

_DEPLOY = """
import json, sys, ray
from ray import serve
from ray.serve.schema import LoggingConfig
from deployments.app import AppArgs, build_app
address, port, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
ray.init(address=address, logging_level="WARNING")
serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
serve.run(build_app(AppArgs(**args)), name="pose", route_prefix="/",
          logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
"""


def _wait_port_free(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                return
            except OSError:
                time.sleep(0.5)
    raise RuntimeError(f"port {port} still in use {timeout} s after the head was killed")


def wait_ready(client, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if client.get("/readyz", timeout=5).status_code == 200:
                return time.monotonic() - start
        except Exception:  # connection refused while the head is down
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the service did not answer /readyz within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--job-store", default=server_url())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import httpx
    from cluster_helpers import CLUSTER_ENV, ingress_and_two_video_nodes
    from serve_helpers import free_port
    from videos import crossing_video

    from pipeline.tiny.cache import tiny_roots

    work = Path(tempfile.mkdtemp(prefix="chaos-head-"))
    tiny_roots(work / "tiny")
    clip = crossing_video(work / "clip.mp4", n=args.frames).read_bytes()
    cleanup = contextlib.ExitStack()  # the schema is dropped at the very end
    store_url, schema = cleanup.enter_context(isolated_schema(args.job_store, "pose_chaos"))
    env = {**CLUSTER_ENV, "RAY_REDIS_ADDRESS": args.redis, "RAY_external_storage_namespace": schema,
           "RAY_gcs_rpc_server_reconnect_timeout_s": "120"}
    cluster = ingress_and_two_video_nodes(work, env)
    events: list[tuple[str, str]] = []
    try:
        head_port = int(cluster.address.rsplit(":", 1)[1])
        http_port = free_port()
        app = {
            "profile": "tiny", "tiny_dir": str(work / "tiny"), "data_dir": str(work / "shared"),
            "placement": {"ingress": {"pose_ingress": 0.01}, "tracker": {"pose_video": 1.0}},
            "jobs": {"max_active": 1, "max_queued": 32, "lease_s": 10.0, "workers": 2, "job_store": store_url},
        }
        subprocess.run([sys.executable, "-c", _DEPLOY, cluster.address, str(http_port), json.dumps(app)],
                       check=True, env={**os.environ, **env}, cwd=HERE.parent, timeout=600)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as client:
            wait_ready(client, 300)
            ids = []
            for _ in range(args.jobs):
                resp = client.post("/v1/videos", files={"video": ("clip.mp4", clip, "video/mp4")})
                resp.raise_for_status()
                ids.append(resp.json()["id"])
            while not any(client.get(f"/v1/jobs/{i}").json()["progress"]["frames_done"] for i in ids):
                time.sleep(0.5)
            done_before = {i: client.get(f"/v1/jobs/{i}").json()["progress"]["frames_done"] for i in ids}
            t0 = time.monotonic()
            killed = cluster.kill(cluster.head())
            events.append(("head killed (processes)", str(killed)))
            _wait_port_free(head_port, 60)
            # `ray start --head` refuses an address that processes on this machine still name as
            # their GCS (the surviving worker nodes do) when it is also the last cluster started
            # here; on a real head machine neither holds. Forget the record, keep the address.
            Path(tempfile.gettempdir(), "ray", "ray_current_cluster").unlink(missing_ok=True)
            cluster.start_head(num_cpus=1, resources={"pose_ingress": 1}, private=True, port=head_port)
            events.append(("head started again after s", f"{time.monotonic() - t0:.1f}"))
            back = wait_ready(client, 600)
            events.append(("HTTP /readyz 200 again after s", f"{time.monotonic() - t0:.1f}"))
            final = {}
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                final = {i: client.get(f"/v1/jobs/{i}") for i in ids}
                if all(r.status_code == 200 and r.json()["state"] in ("succeeded", "failed", "cancelled") for r in final.values()):
                    break
                time.sleep(2.0)
            events.append(("all jobs ended after s", f"{time.monotonic() - t0:.1f}"))
            del back
        rows = []
        for i in ids:
            r = final[i]
            if r.status_code != 200:
                rows.append((i[:8], done_before[i], "LOST", "-", "-"))
                continue
            job = r.json()
            rows.append((i[:8], done_before[i], job["state"], job["attempts"], job["progress"]["frames_done"]))
        print_table("head-node failure: events (seconds from the kill)", ["event", "value"], events)
        print()
        print_table(
            f"{args.jobs} jobs of {args.frames} frames across the head's death",
            ["job", "frames done at the kill", "end state", "attempts", "frames done"],
            rows,
        )
        lost = sum(1 for r in rows if r[2] != "succeeded")
        print(f"\njobs not succeeded: {lost}")
    finally:
        cluster.stop()
        cleanup.close()
        _drop_redis_namespace(args.redis, schema)


def _drop_redis_namespace(redis: str, namespace: str) -> None:
    """Delete the GCS keys this run left in Redis (they carry the storage namespace)."""
    host, port = redis.rsplit(":", 1)
    cli = ["redis-cli", "-h", host, "-p", port]
    try:
        keys = subprocess.run([*cli, "--scan", "--pattern", f"*{namespace}*"], capture_output=True, text=True,
                              timeout=60).stdout.split()
        for start in range(0, len(keys), 100):
            subprocess.run([*cli, "DEL", *keys[start : start + 100]], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not clean Redis namespace %s: %s", namespace, exc)


if __name__ == "__main__":
    main()
