"""Shared by the serving tests and the serving benchmark: a local Ray + Serve with the tiny profile."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def wait_job(client: Any, job_id: str, timeout: float = 240.0, poll_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` (an httpx client) until the job ends; its last status."""
    import time

    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in TERMINAL:
            return job
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def wait_overlay(client: Any, job_id: str, timeout: float = 240.0, poll_s: float = 0.25) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until a succeeded render job's overlay is ready or failed; its last status."""
    import time

    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["overlay"] is not None, job
        if job["overlay"]["state"] != "pending":
            return job
        time.sleep(poll_s)
    raise AssertionError(f"the overlay of job {job_id} was still pending after {timeout} s: {job}")


def assert_same_result(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Two video results agree: same frames, people and track ids; numbers within 1e-4
    (batching may change rounding)."""
    assert got["video"] == want["video"] and got["tracks"] == want["tracks"] and got["models"] == want["models"]
    assert len(got["frames"]) == len(want["frames"])
    for fg, fw in zip(got["frames"], want["frames"]):
        assert (fg["frame_index"], fg["time_s"]) == (fw["frame_index"], fw["time_s"])
        assert [p["track_id"] for p in fg["people"]] == [p["track_id"] for p in fw["people"]]
        for pg, pw in zip(fg["people"], fw["people"]):
            assert abs(pg["score"] - pw["score"]) <= 1e-4, (pg["score"], pw["score"])
            for key in ("bbox", "keypoints_2d", "keypoints_3d"):
                np.testing.assert_allclose(pg[key], pw[key], rtol=1e-4, atol=1e-4, err_msg=key)
            for group in ("smpl", "camera"):
                for key, value in pw[group].items():
                    np.testing.assert_allclose(pg[group][key], value, rtol=1e-4, atol=1e-4, err_msg=f"{group}.{key}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stick_figures(height: int = 360, width: int = 480) -> np.ndarray:
    """A BGR scene with three drawn people: the figures the tiny detector is calibrated to find
    (also at the tiny profile's fast detector settings)."""
    from pipeline.tiny.vitdet import draw_figures

    return draw_figures([width // 4, width // 2 + 20, 4 * width // 5], size=(height, width))


def pipeline_cli(*args: str, tiny_dir: Path, timeout: float = 600.0) -> tuple[Any, str]:
    """``python -m pipeline ARGS`` as `serve_tiny`'s replicas run the models: the tiny ones that
    the service writes to ``tiny_dir`` (the CLI's ``--profile tiny`` finds them through
    ``$POSE_TINY_DIR``, as the service does without ``tiny_dir``), one torch thread (Ray's
    workers get OMP_NUM_THREADS=1). Its JSON answer and its log."""
    env = {**os.environ, "POSE_TINY_DIR": str(tiny_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, f"cv2 could not encode {ext}"
    return buf.tobytes()


@contextmanager
def serve_tiny(
    tiny_dir: Path,
    *,
    env: dict[str, str] | None = None,
    num_cpus: int = 2,
    **app_args: Any,
) -> Iterator[str]:
    """Start local Ray and the application (tiny profile); yield its base URL; shut both down."""
    import ray
    from ray import serve

    from deployments.app import AppArgs, build_app

    if "data_dir" not in app_args:  # video jobs: never the user's default data folder in tests
        app_args["data_dir"] = tempfile.mkdtemp(prefix="pose-data-")
    port = free_port()
    env_vars = {"OMP_NUM_THREADS": "1", **(env or {})}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs(profile="tiny", tiny_dir=str(tiny_dir), **app_args)), name="pose", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


class InProcessHost:
    """The API's model backend (`service.api.backend.ModelBackend`) without Ray: what the Serve
    deployments are to the API, for one in-process video worker (``worker``: a
    `service.worker.VideoWorker`, or None when no job is to run). Images are not served here."""

    def __init__(self) -> None:
        self.worker: Any = None

    async def regress(self, image: Any, boxes: Any, vertices: bool) -> Any:
        from pipeline.errors import PoseError

        raise PoseError("not_ready", "images are not served by this host", status=503)

    async def overlay(self, image: Any, boxes: Any, side_view: bool = False) -> bytes:
        from pipeline.errors import PoseError

        raise PoseError("not_ready", "images are not served by this host", status=503)

    async def readiness(self) -> dict[str, bool]:
        return {"Tracker": self.worker is not None}

    async def stages_info(self) -> dict[str, Any]:
        return {}

    def host_info(self) -> dict[str, Any]:
        return {}

    def cluster_nodes(self) -> int:
        return 1

    def has_video_worker(self) -> bool:
        return True

    def wake_worker(self) -> None:
        if self.worker is not None:
            asyncio.get_running_loop().create_task(self.worker.wake())

    def map_error(self, exc: BaseException) -> Any:
        return None
