"""End to end at real size: where a frame's time goes, in process and through the service.

A generated 1080p clip (``--frames`` frames, 60 by default) with 1, 5 and 20 people a frame runs

1. in process (`pipeline.video.runner.VideoRunner`, no Ray), and
2. through the served application (upload -> job -> poll -> result download),

with the full-size architectures (ViTDet-H or RegNetY-4GF Mask R-CNN, ``--detectors``; HMR2.0b,
PHALP), each detector on the same frames. The table gives milliseconds per
frame for each stage (decode, detector, HMR2 crops + forward + SMPL, appearance = masks + UV
texture + embedding, tracking, result writing), frames per second, peak resident memory, and
the ratio to the reference's published figures: 1.8 frames/s end to end (4D-Humans issue #27,
RTX 4090), HMR2.0 32 ms per crop, ViTDet-H 196 ms per image. A second table gives each
replica's start to ready: what an autoscaling step waits for.

Weights (``--weights``):

- ``random`` (default): random weights at the published sizes, written in the official file
  layouts by `bench/cold_start.py`'s writers, so both paths load them the way they load the
  real files. Random weights find no one in a picture, so the detector's person logit is raised:
  every proposal scores as a person, and ``max_people`` keeps the N best a frame. Those N boxes
  do not sit on the drawn people; their cost downstream is what counts here.
- ``cache``: the real checkpoints from the caches (``$POSE_WEIGHTS_DIR`` or the upstream
  defaults); people per frame are then whatever the detector finds, at most N.
- ``tiny``: the tiny profile (seconds, not minutes: a check of the benchmark itself).

    python bench/e2e.py                                  # CPU, float32, 60 frames, 1/5/20 people
    python bench/e2e.py --frames 4 --people 1 5 --modes inprocess
    python bench/e2e.py --device cuda --dtype bfloat16   # on a GPU machine
    python bench/e2e.py --detectors regnety --people 1 5 # the fast detector only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import print_table  # noqa: E402
from video_memory import write_clip  # noqa: E402  (drawn people pacing in their lanes)

logger = logging.getLogger("e2e")

REFERENCE_FPS = 1.8  # 4D-Humans track.py end to end, RTX 4090 (issue #27)
REFERENCE_HMR2_MS_PER_CROP = 32.0
REFERENCE_VITDET_MS_PER_IMAGE = 196.0
PERSON_LOGIT = 12.0  # random weights: softmax(person) ~ 1 for every proposal
_PORT = 8771


def random_caches(root: Path, detectors: list[str]) -> Path:
    """Full-size random caches under ``root`` (written once, then reused), every proposal a person."""
    from cold_start import write_all

    from pipeline.weights import catalog

    roots = write_all(root, [*detectors, "hmr2", "phalp"])
    for detector in detectors:
        marker = root / f"e2e-person-logit-{detector}"
        if marker.is_file():
            continue
        path = catalog([detector])[0].candidates(roots)[0]
        with open(path, "rb") as fh:
            doc = pickle.load(fh)
        # Every stage of the cascade (its scores are averaged); class 0 is COCO's person, the last
        # logit is background.
        biases = [k for k in doc["model"] if k.startswith("roi_heads.box_predictor.") and k.endswith("cls_score.bias")]
        if not biases:
            raise KeyError(f"no box predictor classification bias in {path}")
        for key in biases:
            doc["model"][key][0] = PERSON_LOGIT
        with open(path, "wb") as fh:
            pickle.dump(doc, fh, protocol=4)
        marker.write_text(f"{PERSON_LOGIT}\n")
    return root


def status_mib(pid: int | str, field: str) -> float:
    """A memory line of /proc/<pid>/status in MiB (VmHWM: the peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def profile_settings(weights: str, people: int, detector: str) -> dict:
    """`VideoRunner.from_cache` keyword arguments equal to what the served profile does."""
    from configs.profiles import full, tiny

    profile = tiny() if weights == "tiny" else full()
    return {**profile.runner_options(detector), "max_people": people}  # type: ignore[arg-type]


def stage_row(mode: str, detector: str, people: int, frames: int, crops: int, seconds: dict[str, float], wall: float, peak: float) -> list:
    ms = {k: 1000.0 * v / max(1, frames) for k, v in seconds.items()}
    fps = frames / wall
    cell = lambda key: ms[key] if key in ms else "-"  # noqa: E731
    return [
        mode, detector, people, frames, crops, cell("decode_s"), cell("detect_s"), cell("hmr2_s"), cell("models_s"),
        cell("appearance_s"), cell("tracking_s"), cell("write_s"), 1000.0 * wall / frames, fps,
        fps / REFERENCE_FPS, peak,
    ]


def run_inprocess(roots, clips: dict[int, Path], warmups: dict[int, Path], args, detector: str) -> tuple[list, list]:
    """Each clip through one `VideoRunner` per people count (the models loaded once)."""
    import torch

    from pipeline.video.runner import VideoRunner

    rows, models = [], []
    first = min(clips)
    started = time.perf_counter()
    runner = VideoRunner.from_cache(roots, device=args.device, dtype=args.dtype, download=False,
                                    **profile_settings(args.weights, first, detector))
    load_s = time.perf_counter() - started
    logger.warning("in-process models loaded in %.1f s", load_s)
    for people, clip in clips.items():
        runner.stages.max_people = people
        runner.run_to(warmups[people], Path(tempfile.mkdtemp(prefix="e2e-warm-")))  # first calls, lazy imports
        runner.stages.seconds = dict.fromkeys(runner.stages.seconds, 0.0)
        runner.stages.people = 0
        timings: dict[str, float] = {}

        def on_progress(done: int, total: int | None, t: dict[str, float]) -> None:
            timings.update(t)

        start = time.perf_counter()
        files = runner.run_to(clip, Path(tempfile.mkdtemp(prefix="e2e-")), on_progress=on_progress)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        seconds = {**timings, **runner.stages.seconds}
        seconds.pop("models_s", None)  # in process the models run inside the wait; shown split instead
        rows.append(stage_row("in process", detector, people, files.frames, runner.stages.people, seconds, wall,
                              status_mib("self", "VmHWM")))
        detect_ms = 1000.0 * seconds["detect_s"] / files.frames
        models.append([detector, people, detect_ms,
                       detect_ms / REFERENCE_VITDET_MS_PER_IMAGE if detector == "vitdet" else "-",
                       1000.0 * seconds["hmr2_s"] / max(1, runner.stages.people),
                       1000.0 * seconds["hmr2_s"] / max(1, runner.stages.people) / REFERENCE_HMR2_MS_PER_CROP])
        logger.warning("in process, %s, %d people: %.2f frames/s", detector, people, files.frames / wall)
    return rows, models


def run_served(root: Path | None, clips: dict[int, Path], warmups: dict[int, Path], args) -> tuple[list, list]:
    """Each clip as a job through the application, redeployed per detector and people count
    (``detector``, ``max_people``)."""
    import httpx
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from deployments.app import AppArgs, build_app

    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None)
    rows, starts = [], []
    data = Path(tempfile.mkdtemp(prefix="e2e-data-"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": _PORT})
        for detector, (people, clip) in ((d, item) for d in args.detectors for item in clips.items()):
            app = AppArgs(
                detector=detector,
                profile="tiny" if args.weights == "tiny" else "full",
                weights_dir=None if root is None or args.weights == "tiny" else str(root),
                tiny_dir=str(root) if args.weights == "tiny" and root is not None else None,
                download=False, device=args.device, dtype=args.dtype, data_dir=str(data),
                limits={"max_people": people}, jobs={"max_active": 1, "max_queued": 4},
            )
            started = time.perf_counter()
            serve.run(build_app(app), name="pose", route_prefix="/",
                      logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
            deploy_s = time.perf_counter() - started
            with httpx.Client(base_url=f"http://127.0.0.1:{_PORT}", timeout=3600) as client:
                info = client.get("/v1/info").json()["deployments"]
                starts.append([detector, people, f"{deploy_s:.1f}", *(_start(info.get(k)) for k in ("detector", "regressor", "tracker"))])
                _job(client, warmups[people])  # warm-up: first calls, lazy imports
                start = time.perf_counter()
                job, crops = _job(client, clip)
                wall = time.perf_counter() - start
                info = client.get("/v1/info").json()["deployments"]
            frames = int(job["progress"]["frames_done"])
            peak = sum(status_mib(info[k]["pid"], "VmHWM") for k in ("detector", "regressor", "tracker") if k in info)
            rows.append(stage_row("served", detector, people, frames, crops, job["timings"], wall, peak))
            logger.warning("served, %s, %d people: %.2f frames/s", detector, people, frames / wall)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows, starts


def _start(stage: dict | None) -> str:
    if not stage or "start" not in stage:
        return "-"
    s = stage["start"]
    return f"{s['start_to_ready_s']:.1f} (load {s['load_s']:.1f})"


def _job(client, clip: Path) -> tuple[dict, int]:
    """One job start to finish; the job's status and the people in its result."""
    resp = client.post("/v1/videos", files={"video": (clip.name, clip.read_bytes(), "video/mp4")})
    resp.raise_for_status()
    job_id = resp.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    if job["state"] != "succeeded":
        raise RuntimeError(f"job ended {job['state']}: {job['error']}")
    people = 0
    with client.stream("GET", f"/v1/jobs/{job_id}/result", params={"format": "jsonl"}) as body:
        for line in body.iter_lines():
            if line.strip():
                people += len(json.loads(line)["people"])
    return job, people


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--size", type=int, nargs=2, default=[1080, 1920], metavar=("H", "W"))
    parser.add_argument("--weights", choices=["random", "cache", "tiny"], default="random")
    parser.add_argument("--detectors", nargs="+", choices=["vitdet", "regnety"], default=["vitdet", "regnety"],
                        help="person detectors to compare on the same clips")
    parser.add_argument("--cache-dir", type=Path, default=None, help="random/tiny weights written here (reused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--modes", nargs="+", choices=["inprocess", "served"], default=["inprocess", "served"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may hand out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="e2e-"))
    root = args.cache_dir or tmp / "weights"
    if args.weights == "random":
        random_caches(root, args.detectors)
        roots_dir: Path | None = root
    elif args.weights == "tiny":
        roots_dir = root
    else:
        roots_dir = Path(os.environ["POSE_WEIGHTS_DIR"]) if os.environ.get("POSE_WEIGHTS_DIR") else None
    from pipeline.weights import CacheRoots

    if args.weights == "tiny":
        from pipeline.tiny.cache import tiny_roots

        roots = tiny_roots(root)
    else:
        roots = CacheRoots.under(roots_dir) if roots_dir is not None else CacheRoots.from_env()
    clips = {n: write_clip(tmp / f"clip-{n}.mp4", args.frames, tuple(args.size), people=n) for n in args.people}
    warmups = {n: write_clip(tmp / f"warm-{n}.mp4", 2, tuple(args.size), people=n) for n in args.people}
    rows, models, starts = [], [], []
    if "inprocess" in args.modes:
        for detector in args.detectors:
            r, m = run_inprocess(roots, clips, warmups, args, detector)
            rows += r
            models += m
    if "served" in args.modes:
        r, starts = run_served(roots_dir, clips, warmups, args)
        rows += r
    h, w = args.size
    print_table(
        f"{args.frames}-frame {w}x{h} clip, weights {args.weights}, {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} threads; ms per frame by stage (served: models = waiting for detector + regressor; "
        "peak MiB: this process in process, the sum of the model replicas served)",
        ["path", "detector", "people", "frames", "crops", "decode", "detect", "hmr2", "models", "appearance", "tracking",
         "write", "ms/frame", "frames/s", f"speed / ref {REFERENCE_FPS} fps", "peak MiB"],
        rows,
    )
    if models:
        print()
        print_table(
            "models in process against the reference's figures (time / ref below 1: faster than the reference)",
            ["detector", "people", "detector ms/image", f"time / ViTDet ref {REFERENCE_VITDET_MS_PER_IMAGE:.0f} ms",
             "HMR2 ms/crop", f"time / ref {REFERENCE_HMR2_MS_PER_CROP:.0f} ms"],
            models,
        )
    if starts:
        print()
        print_table(
            "replica start to ready, seconds (load: the model read inside it); serve.run: the whole redeploy",
            ["detector", "people", "serve.run s", "Detector", "MeshRegressor", "Tracker"],
            starts,
        )


if __name__ == "__main__":
    main()
