"""Memory of the served video path against video length (tiny profile, local Ray).

A long synthetic clip (3 drawn people a frame) goes through the real application: upload, job,
poll, streamed result download. The resident memory (VmRSS) of the video worker replica and of
the Ingress replica is read at every poll (twice a second); the table shows, per ``--every``
frames, the mean and the max of the readings, and the slope of a least-squares line through all
of them (MiB per 1,000 frames), with and without ``vertices=true``. One short job runs first
(``--warmup-jobs``): a replica's first job grows it once (lazy imports, allocator arenas), which
is not growth in video length. Then ``--short-jobs`` short jobs run one after another and the
worker's memory before and after is printed (per-job state must be released when a job ends).

    python bench/video_memory.py                        # 3,000 frames, 360x640
    python bench/video_memory.py --frames 6000 --every 1000 --short-jobs 60
    python bench/video_memory.py --vertices false --short-jobs 0

Linux only (reads /proc). Every process runs torch with one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

logger = logging.getLogger("video_memory")


def write_clip(path: Path, frames: int, size: tuple[int, int], people: int = 3) -> Path:
    """``people`` drawn figures pacing back and forth (they never leave the frame or overlap)."""
    import av

    from pipeline.tiny.vitdet import draw_figures

    h, w = size
    lane = w // people
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            phase = (i % 80) / 80.0
            offset = int((lane - 70) * (phase if phase < 0.5 else 1 - phase))
            img = draw_figures([k * lane + 35 + offset for k in range(people)], size=size)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:, :, ::-1]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def replica_pids(deployment: str) -> list[int]:
    """Processes of a Serve replica of ``deployment`` (Ray titles them ``ServeReplica:<app>:<name>``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"ServeReplica:pose:{deployment}".encode() in cmdline:
            out.append(int(entry.name))
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_per_1000(frames: list[int], values: list[float]) -> float:
    if len(frames) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(frames, float), np.asarray(values, float), 1)[0] * 1000.0)


def run_long(client, clip: bytes, every: int, vertices: bool) -> tuple[list[tuple[int, float, float]], float, float]:
    """Upload, sample memory at every poll (twice a second) while the job runs, download the
    result streamed; the samples (frames done, worker MiB, Ingress MiB), the Ingress's peak
    while streaming, and the seconds it all took."""
    start = time.perf_counter()
    resp = client.post("/v1/videos", files={"video": ("long.mp4", clip, "video/mp4")},
                       data={"vertices": "true" if vertices else "false"})
    resp.raise_for_status()
    job_id = resp.json()["id"]
    worker, ingress = replica_pids("Tracker")[0], replica_pids("Ingress")[0]
    samples: list[tuple[int, float, float]] = []
    next_mark = every
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        done = job["progress"]["frames_done"]
        if done > 0 and job["state"] == "running":
            samples.append((done, rss_mib(worker), rss_mib(ingress)))
        if done >= next_mark:
            logger.warning("%d frames: worker %.0f MiB, ingress %.0f MiB", *samples[-1])
            next_mark = (done // every + 1) * every
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise RuntimeError(f"job ended {job['state']}: {job['error']}")
    size = 0
    peak_ingress = rss_mib(ingress)
    with client.stream("GET", f"/v1/jobs/{job_id}/result") as body:
        for part in body.iter_bytes():
            size += len(part)
            peak_ingress = max(peak_ingress, rss_mib(ingress))
    logger.warning("result: %.1f MB of JSON streamed; ingress peak while streaming %.0f MiB", size / 1e6, peak_ingress)
    return samples, peak_ingress, time.perf_counter() - start


def run_short(client: Any, clip: bytes) -> None:
    """Upload a short clip and wait for its job to end."""
    resp = client.post("/v1/videos", files={"video": ("short.mp4", clip, "video/mp4")})
    resp.raise_for_status()
    job_id = resp.json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running"):
        time.sleep(0.2)


def windows(samples: list[tuple[int, float, float]], every: int) -> list[tuple[int, float, float, float, float]]:
    """Per ``every`` frames: the last frame count, worker mean and max, Ingress mean and max.

    One reading of RSS lands anywhere in a chunk's own allocations (frames, masks, UV maps,
    freed when the chunk is done); the mean of a window's readings is the level, the max its peak.
    """
    out = []
    for start in range(0, samples[-1][0] + 1, every):
        part = [s for s in samples if start < s[0] <= start + every]
        if part:
            w, i = [p[1] for p in part], [p[2] for p in part]
            out.append((part[-1][0], float(np.mean(w)), max(w), float(np.mean(i)), max(i)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    parser.add_argument("--short-jobs", type=int, default=60)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--vertices", choices=["false", "true", "both"], default="both",
                        help="run the long video without vertices, with them, or both (default)")
    parser.add_argument("--warmup-jobs", type=int, default=1,
                        help="short jobs run before the long ones: a replica's first job pays one-time growth "
                        "(lazy imports, allocator arenas, caches) that is not growth in video length")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import httpx
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import tiny_roots

    tmp = Path(tempfile.mkdtemp(prefix="video-memory-"))
    tiny_roots(tmp / "tiny")
    clip = write_clip(tmp / "long.mp4", args.frames, tuple(args.size)).read_bytes()
    short = write_clip(tmp / "short.mp4", 8, tuple(args.size)).read_bytes()
    limits = {"max_frames": max(18_000, args.frames), "max_duration_s": max(600.0, args.frames / 25 + 1)}

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8767})
        app_args = AppArgs(profile="tiny", tiny_dir=str(tmp / "tiny"), data_dir=str(tmp / "data"),
                           video_limits=limits, jobs={"max_active": 1, "max_queued": 4})
        serve.run(build_app(app_args), name="pose", route_prefix="/",
                  logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
        with httpx.Client(base_url="http://127.0.0.1:8767", timeout=600) as client:
            for _ in range(args.warmup_jobs):
                run_short(client, short)
            rows = []
            modes = {"false": (False,), "true": (True,), "both": (False, True)}[args.vertices]
            for vertices in modes:
                samples, streamed_peak, seconds = run_long(client, clip, args.every, vertices)
                frames = [s[0] for s in samples]
                flag = str(vertices).lower()
                for done, w_mean, w_max, i_mean, i_max in windows(samples, args.every):
                    rows.append((flag, done, f"{w_mean:.0f} / {w_max:.0f}", f"{i_mean:.0f} / {i_max:.0f}", "", ""))
                rows.append((flag, "streaming result", "", f"- / {streamed_peak:.0f}", "", ""))
                rows.append((flag, f"slope ({len(samples)} readings)", "", "",
                             f"{slope_per_1000(frames, [s[1] for s in samples]):+.2f}",
                             f"{slope_per_1000(frames, [s[2] for s in samples]):+.2f}"))
                logger.warning("vertices=%s: %d frames in %.0f s (%.1f frames/s)", vertices, frames[-1], seconds, frames[-1] / seconds)
            print_table(
                f"resident memory while one {args.frames}-frame {args.size[1]}x{args.size[0]} video (3 people a frame) "
                "is processed, read twice a second; per window the mean / max, and the slope of a least-squares "
                "line through every reading",
                ["vertices", "frames done", "worker MiB", "ingress MiB", "worker MiB/1000 frames", "ingress MiB/1000 frames"],
                rows,
            )
            if args.short_jobs:
                worker = replica_pids("Tracker")[0]
                before = rss_mib(worker)
                marks = []
                for i in range(args.short_jobs):
                    run_short(client, short)
                    if (i + 1) % max(1, args.short_jobs // 4) == 0:
                        marks.append((i + 1, f"{rss_mib(worker):.0f}"))
                print()
                print_table(
                    f"video worker resident memory over {args.short_jobs} short jobs (started at {before:.0f} MiB)",
                    ["jobs done", "worker MiB"],
                    marks,
                )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
