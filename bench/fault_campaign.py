"""A fault campaign: video jobs through the real application while one fault at a time hits it.

One local Ray + Serve application (tiny profile), its jobs in PostgreSQL (a schema of its own,
or with ``db-restart`` a server of its own) with a short lease. A reference job runs first, undisturbed. Then, per fault, ``--jobs`` jobs of
the same clip are submitted; once they have made progress the fault is injected; every job is
awaited to its end. The table prints, per fault, how the jobs ended:

* ``succeeded``: ended ``succeeded`` with a result equal to the reference (frames, track ids,
  numbers within 1e-4);
* ``wrong``: ended ``succeeded`` with another result; ``failed``: ended failed or cancelled;
* ``lost``: gone (404) or not ended within ``--timeout``;
* ``at fault``: each job's frames done (committed checkpoints) when the fault was injected;
  ``resumed at``: for each job that needed a new attempt, the frame it resumed from. What a job
  redoes is the chunk it had in flight past its last checkpoint (at most ``jobs.chunk_size``
  frames, more only if it checkpointed between the two readings); a model replica's death is
  ridden out inside the attempt (its chunks in flight are submitted again);
* ``attempts`` / ``crashes``: summed over the jobs (a graceful hand-off is an attempt, not a crash).

Faults: ``kill-detector``, ``kill-regressor``, ``kill-tracker``, ``kill-renderer`` (SIGKILL of the
replica's process, its pid from ``/v1/info``; the renderer's jobs ask for the overlay, which must
end ``ready``), ``db-drop`` (every store connection terminated twice, 2 s apart, with
``pg_terminate_backend``), ``db-restart`` (the store's PostgreSQL server, one the campaign
starts for itself, restarted with ``pg_ctl restart -m fast``, then stopped for 3 s and started
again: within the workers' lease and the API's retry bound), ``redeploy`` (the application deleted and deployed again three times:
graceful hand-offs), ``none``.

    python bench/fault_campaign.py [--jobs 2] [--frames 64] [--faults kill-tracker db-drop ...]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))
from _common import print_table  # noqa: E402
from pg_helpers import PrivateServer, isolated_schema, private_server, server_url  # noqa: E402

logger = logging.getLogger("fault_campaign")

FAULTS = ("none", "kill-detector", "kill-regressor", "kill-tracker", "kill-renderer", "db-drop", "db-restart", "redeploy")
TERMINAL = ("succeeded", "failed", "cancelled")


def same_result(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Frames, track ids and numbers of two result documents agree (1e-4)."""
    import numpy as np

    if len(got["frames"]) != len(want["frames"]) or got["tracks"] != want["tracks"]:
        return False
    for fg, fw in zip(got["frames"], want["frames"]):
        if [p["track_id"] for p in fg["people"]] != [p["track_id"] for p in fw["people"]]:
            return False
        for pg, pw in zip(fg["people"], fw["people"]):
            for key in ("bbox", "keypoints_2d", "keypoints_3d"):
                if not np.allclose(pg[key], pw[key], rtol=1e-4, atol=1e-4):
                    return False
    return True


def kill_replica(client: Any, deployment: str) -> None:
    pid = client.get("/v1/info").json()["deployments"][deployment]["pid"]
    os.kill(int(pid), signal.SIGKILL)


def drop_database_connections(server: str, times: int = 2, gap_s: float = 2.0) -> None:
    """Terminate every connection of the job store (its application_name), ``times`` times."""
    import psycopg

    for i in range(times):
        with psycopg.connect(server, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'pose-service%' AND pid <> pg_backend_pid()"
            ).fetchall()
        logger.info("database drop %d: %d connections terminated", i + 1, len(rows))
        time.sleep(gap_s)


def restart_database(server: PrivateServer, down_s: float = 3.0) -> None:
    """Restart the store's server (``-m fast``: its sessions are ended), then stop it, keep it
    down ``down_s`` and start it again."""
    server.restart("fast")
    logger.info("database restarted")
    time.sleep(2.0)
    server.stop("fast")
    time.sleep(down_s)
    server.start()
    logger.info("database down %.1f s, started again", down_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="jobs per fault, submitted together")
    parser.add_argument("--frames", type=int, default=64, help="frames of the clip (crossing figures, 10 fps)")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a fault's jobs may take to end")
    parser.add_argument("--job-store", default=server_url(),
                        help="PostgreSQL server (a schema of its own is made); with db-restart a server of the campaign's own")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)

    import httpx
    from ray import serve
    from serve_helpers import serve_tiny
    from videos import crossing_video

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import tiny_roots

    work = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    tiny_roots(work / "tiny")
    clip = crossing_video(work / "clip.mp4", n=args.frames).read_bytes()
    rows: list[list[object]] = []
    with contextlib.ExitStack() as stack:
        pg: PrivateServer | None = None
        server = args.job_store
        if "db-restart" in args.faults:  # the shared server is not restarted: a server of our own
            server, pg = stack.enter_context(private_server())
        store_url, _ = stack.enter_context(isolated_schema(server, "pose_faults"))
        app_args: dict[str, Any] = {
            "data_dir": str(work / "data"),
            "jobs": {"max_active": max(2, args.jobs), "max_queued": 64, "lease_s": 4.0, "job_store": store_url},
        }
        url = stack.enter_context(serve_tiny(work / "tiny", num_cpus=2, **app_args))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=120.0))

        def submit(render: bool = False) -> str:
            data = {"render": "true"} if render else {}
            resp = client.post("/v1/videos", files={"video": ("clip.mp4", clip, "video/mp4")}, data=data)
            resp.raise_for_status()
            return str(resp.json()["id"])

        def wait(ids: list[str], timeout: float) -> dict[str, dict[str, Any] | None]:
            deadline, ended = time.monotonic() + timeout, {}
            while time.monotonic() < deadline and len(ended) < len(ids):
                for job_id in ids:
                    if job_id in ended:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        resp = client.get(f"/v1/jobs/{job_id}")
                        if resp.status_code == 404:
                            ended[job_id] = None
                        elif resp.status_code == 200 and resp.json()["state"] in TERMINAL:
                            ended[job_id] = resp.json()
                time.sleep(0.5)
            return {i: ended.get(i) for i in ids}

        reference_id = submit()
        reference_job = wait([reference_id], args.timeout)[reference_id]
        assert reference_job is not None and reference_job["state"] == "succeeded", reference_job
        reference = client.get(f"/v1/jobs/{reference_id}/result").json()

        def redeploy() -> None:
            for _ in range(3):
                serve.delete("pose")
                serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(work / "tiny"), **app_args)),
                          name="pose", route_prefix="/")
                time.sleep(2.0)

        inject: dict[str, Callable[[], None]] = {
            "none": lambda: None,
            "kill-detector": lambda: kill_replica(client, "detector"),
            "kill-regressor": lambda: kill_replica(client, "regressor"),
            "kill-tracker": lambda: kill_replica(client, "tracker"),
            "kill-renderer": lambda: kill_replica(client, "renderer"),
            "db-drop": lambda: drop_database_connections(server),
            "db-restart": lambda: restart_database(pg) if pg is not None else None,
            "redeploy": redeploy,
        }
        for fault in args.faults:
            render = fault == "kill-renderer"
            ids = [submit(render) for _ in range(args.jobs)]
            deadline = time.monotonic() + args.timeout
            progress: dict[str, int] = {}
            while time.monotonic() < deadline:
                progress = {i: client.get(f"/v1/jobs/{i}").json()["progress"]["frames_done"] for i in ids}
                if render:  # the fault must hit the render: wait for a job's overlay to be drawn
                    overlays = [client.get(f"/v1/jobs/{i}").json().get("overlay") or {} for i in ids]
                    if any(o.get("state") == "pending" for o in overlays) and all(v > 0 for v in progress.values()):
                        break
                elif all(v > 0 for v in progress.values()):
                    break
                time.sleep(0.2)
            logger.info("%s: injecting at frames %s", fault, progress)
            inject[fault]()
            ended = wait(ids, args.timeout)
            ok = wrong = failed = lost = attempts = crashes = overlays_ready = 0
            resumed_at: list[str] = []
            for job_id, job in ended.items():
                if job is None:
                    lost += 1
                    continue
                attempts += int(job["attempts"])
                crashes += int(job.get("crashes", 0))
                resumed = job["progress"].get("resumed_from_frame")
                if int(job["attempts"]) > 1 and resumed is not None:
                    resumed_at.append(str(resumed))
                if job["state"] != "succeeded":
                    failed += 1
                elif same_result(client.get(f"/v1/jobs/{job_id}/result").json(), reference):
                    ok += 1
                else:
                    wrong += 1
                if render:
                    overlay_deadline = time.monotonic() + args.timeout
                    while time.monotonic() < overlay_deadline:
                        state = (client.get(f"/v1/jobs/{job_id}").json().get("overlay") or {}).get("state")
                        if state in ("ready", "failed"):
                            overlays_ready += state == "ready"
                            break
                        time.sleep(0.5)
            rows.append([fault, args.jobs, ok, wrong, failed, lost, ",".join(str(v) for v in progress.values()),
                         ",".join(resumed_at) or "-", attempts, crashes, f"{overlays_ready}/{args.jobs}" if render else "-"])
            logger.info("%s: %s", fault, rows[-1])
    print_table(
        f"fault campaign: {args.jobs} jobs of {args.frames} frames per fault (tiny profile, PostgreSQL store, lease 4 s)",
        ["fault", "jobs", "succeeded", "wrong", "failed", "lost", "at fault", "resumed at", "attempts", "crashes", "overlays ready"],
        rows,
    )


if __name__ == "__main__":
    main()
