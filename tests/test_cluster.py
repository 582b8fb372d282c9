"""A real three-node Ray cluster on this machine: one head, two worker nodes started with
``ray start``, each worker in its own mount namespace with a private tmpfs on the default data
folder; one shared folder for storage and a real PostgreSQL job store.

The Ingress is placed on the head (custom resource ``pose_ingress``), the two video workers on
the worker nodes (``pose_video``). Jobs uploaded through the head's HTTP proxy succeed and
equal the in-process result even though one worker node is killed while they run; their
results are readable afterwards. With the default SQLite store the same cluster refuses to
start the application, loudly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from cluster_helpers import CLUSTER_ENV, LocalCluster, ingress_and_two_video_nodes, unshare_available  # noqa: E402
from conftest import _in_ci  # noqa: E402
from serve_helpers import free_port, wait_job  # noqa: E402
from videos import crossing_video, figure_frame, write_video  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    import os

    reason = unshare_available()
    if reason is not None:
        if _in_ci():
            pytest.fail(f"the multi-node test needs private mount namespaces: {reason}")
        pytest.skip(f"the multi-node test needs private mount namespaces: {reason}")
    import ray

    saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)  # this process is the cluster's driver
    c = ingress_and_two_video_nodes(tmp_path_factory.mktemp("cluster"))
    try:
        ray.init(address=c.address, logging_level="WARNING")
        yield c
    finally:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            c.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The storage every node mounts (here: a folder outside the private tmpfs), with the tiny
    models written once, and the clips."""
    from pipeline.tiny.cache import tiny_roots

    base = tmp_path_factory.mktemp("shared")
    tiny_roots(base / "tiny")
    clips = base / "clips"
    clips.mkdir()
    return {
        "base": base,
        "tiny": base / "tiny",
        "crossing": crossing_video(clips / "crossing.mp4"),
        "long": write_video(clips / "long.mp4", [figure_frame([120 + 8 * i, 520 - 8 * i]) for i in range(32)]),
    }


def _app_args(shared: dict[str, Path], data_dir: Path, **jobs: Any) -> dict[str, Any]:
    return {
        "profile": "tiny",
        "tiny_dir": str(shared["tiny"]),
        "data_dir": str(data_dir),
        "placement": {"ingress": {"pose_ingress": 0.01}, "tracker": {"pose_video": 1.0}},
        "jobs": {"max_active": 1, "max_queued": 8, "lease_s": 4.0, "workers": 2, "stage_timeout_s": 20.0, **jobs},
    }


def test_sqlite_store_on_a_cluster_refuses_to_start(cluster, shared, tmp_path):
    from deployments.app import AppArgs, build_app

    assert cluster.alive_nodes() == 3
    with pytest.raises(ValueError, match="job store is node-local; configure job_store for a cluster"):
        build_app(AppArgs(**_app_args(shared, tmp_path / "data")))


def test_jobs_survive_losing_a_worker_node(cluster, shared, postgres_url, tmp_path):
    from ray import serve

    from deployments.app import AppArgs, build_app
    from pipeline.tiny.cache import runner_settings, tiny_roots
    from pipeline.video.runner import VideoRunner

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    args = AppArgs(**_app_args(shared, shared["base"] / "data", job_store=postgres_url))
    serve.run(build_app(args), name="pose", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        info = client.get("/v1/info").json()
        video = info["deployments"]["tracker"]
        assert video["job_store_shared"] is True and "postgresql://" in video["job_store"]
        assert video["node_id"] != info["ingress"]["node_id"], "the video workers must not run on the Ingress node"

        clips = [shared["long"], shared["crossing"], shared["long"]]
        ids = []
        for clip in clips:
            resp = client.post("/v1/videos", files={"video": (clip.name, clip.read_bytes(), "video/mp4")})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        # Both workers busy (one job each), then one worker node is lost with its job mid-run.
        deadline = time.monotonic() + 240
        while sum(client.get(f"/v1/jobs/{i}").json()["progress"]["frames_done"] > 0 for i in ids) < 2:
            assert time.monotonic() < deadline, "two jobs never ran at once"
            time.sleep(0.3)
        killed = cluster.kill(cluster.nodes[1])
        assert killed > 0
        jobs = [wait_job(client, i, 420) for i in ids]
        assert [j["state"] for j in jobs] == ["succeeded"] * 3, jobs
        assert any(j["attempts"] >= 2 for j in jobs), "a job of the lost node should have been resumed"
        results = [client.get(f"/v1/jobs/{i}/result").json() for i in ids]
        assert cluster.alive_nodes() == 2

    runner = VideoRunner.from_cache(tiny_roots(shared["tiny"]), download=False, device="cpu", **runner_settings())
    for clip, got in zip(clips, results):
        want = json.loads(runner.run(clip).model_dump_json())
        _assert_same(got, want)


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["video"] == want["video"] and got["tracks"] == want["tracks"]
    assert [f["frame_index"] for f in got["frames"]] == [f["frame_index"] for f in want["frames"]]
    for fg, fw in zip(got["frames"], want["frames"]):
        assert [p["track_id"] for p in fg["people"]] == [p["track_id"] for p in fw["people"]]
        for pg, pw in zip(fg["people"], fw["people"]):
            np.testing.assert_allclose(pg["keypoints_3d"], pw["keypoints_3d"], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(pg["smpl"]["body_pose"], pw["smpl"]["body_pose"], rtol=1e-4, atol=1e-4)
