"""The Renderer deployment through the real Ray Serve application (tiny profile, local Ray with 2
CPUs): a render job succeeds with its result before its overlay is drawn, the overlay gets its own
state and callbacks, and neither a Renderer that cannot draw, a killed Renderer replica nor a
killed Tracker replica touches the job's result; jobs without ``render`` never reach the
Renderer; the image PNG is drawn there, from the MeshRegressor's answer."""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import encode, free_port, serve_tiny, stick_figures, wait_job, wait_overlay  # noqa: E402
from videos import crossing_video, figure_frame, write_video  # noqa: E402

FRAMES = 40  # the long clip: its overlay takes long enough to kill a replica while it is drawn


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clips")
    media = base / "media"
    media.mkdir()
    return {
        "crossing": crossing_video(base / "crossing.mp4"),
        "long": write_video(base / "long.mp4", [figure_frame([120 + 8 * i, 520 - 8 * i]) for i in range(FRAMES)]),
        "media": media,
    }


@pytest.fixture(scope="module")
def service(tiny_dir: Path, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = {
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "media_dir": str(clips["media"]),
        # a short lease: a render whose Tracker replica died is taken again within seconds
        "jobs": {"max_active": 2, "max_queued": 4, "sync_timeout_s": 240.0, "lease_s": 4.0,
                 "callback_allow_http": True, "callback_allow_hosts": ["127.0.0.1"]},
    }
    with serve_tiny(tiny_dir, **args) as url:
        yield url


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=180.0) as c:
        yield c


def upload(client: httpx.Client, path: Path, **kw: Any) -> str:
    resp = client.post("/v1/videos", files={"video": (path.name, path.read_bytes(), "video/mp4")}, data=kw)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def renderer_info(client: httpx.Client) -> dict[str, Any]:
    info = client.get("/v1/info").json()["deployments"]["renderer"]
    assert "error" not in info, info
    return info


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:300]}"
    body = resp.json()
    assert body["error"]["code"] == code, body
    return body


def overlay_frames(client: httpx.Client, job: dict[str, Any]) -> int:
    import av

    resp = client.get(job["links"]["overlay"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4", resp.text[:300]
    with av.open(io.BytesIO(resp.content)) as container:
        return sum(1 for _ in container.decode(video=0))


def result_frames(client: httpx.Client, job: dict[str, Any]) -> int:
    doc = client.get(job["links"]["result"]).json()
    assert doc["video"]["frame_count"] == len(doc["frames"])
    return len(doc["frames"])


def wait_rendering(client: httpx.Client, job_id: str) -> None:
    """Until the Renderer replica is drawing (the job's overlay still pending)."""
    deadline = time.monotonic() + 240
    while renderer_info(client)["rendering"] == 0:
        overlay = client.get(f"/v1/jobs/{job_id}").json()["overlay"]
        assert overlay is None or overlay["state"] == "pending", f"the overlay ended before a render was seen: {overlay}"
        assert time.monotonic() < deadline, "the Renderer never started drawing"
        time.sleep(0.05)


class Hooks:
    """A loopback callback receiver: the events posted to it, in arrival order."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", free_port()), Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"expected {count} callbacks, got {self.received}"
            time.sleep(0.1)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_job_without_render_never_reaches_the_renderer(client, clips):
    """First in this module: no other job's overlay is being drawn meanwhile."""
    before = renderer_info(client)
    job = wait_job(client, upload(client, clips["crossing"]))
    assert job["state"] == "succeeded" and job["overlay"] is None and "overlay" not in job["results"]
    assert_error(client.get(f"/v1/jobs/{job['id']}/overlay.mp4"), 404, "overlay_not_requested")
    after = renderer_info(client)
    assert after["pid"] == before["pid"]
    assert after["videos_requested"] == before["videos_requested"] == 0
    assert client.get("/readyz").json()["deployments"]["renderer"] is True


def test_the_image_png_is_drawn_by_the_renderer_from_the_regressors_answer(client, tiny_dir):
    """The PNG is the overlay of the MeshRegressor's outputs, byte for byte: drawn here in
    process from the served numbers (vertices, t_full, focal) with the rasterizer as the
    MeshRegressor drew it before the Renderer existed."""
    import torch

    from pipeline.models.hmr2.predictor import HMR2Predictor
    from pipeline.render.overlay import MeshRenderer, RenderConfig, encode_image, overlay_from_output
    from pipeline.tiny.cache import tiny_roots

    image = stick_figures()
    boxes = [[80, 40, 170, 290], [230, 60, 320, 310]]
    ask = {"content": encode(image), "headers": {"content-type": "image/png"}}
    before = renderer_info(client)["images_drawn"]
    for side_view in (False, True):
        png = client.post("/v1/images", params={"boxes": str(boxes), "format": "png", "side_view": str(side_view).lower()}, **ask)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text[:300]
        people = client.post("/v1/images", params={"boxes": str(boxes), "vertices": "true"}, **ask).json()["people"]
        assert len(people) == 2
        output = type("Output", (), {
            "vertices": np.asarray([p["vertices"] for p in people], np.float32),
            "cam_t_full": np.asarray([p["camera"]["t_full"] for p in people], np.float32),
            "focal_length_full": np.asarray([p["camera"]["focal_length_full"] for p in people], np.float32),
            "__len__": lambda self: 2,
        })()
        faces = HMR2Predictor.from_cache(tiny_roots(tiny_dir), device="cpu", download=False).faces  # the regressor's own faces
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the replicas run (OMP_NUM_THREADS=1)
        try:
            drawn = overlay_from_output(image, output, MeshRenderer(faces, RenderConfig(side_view=side_view), device="cpu"))
        finally:
            torch.set_num_threads(threads)
        assert png.content == encode_image(drawn, ".png"), f"side_view={side_view}"
    assert renderer_info(client)["images_drawn"] == before + 2
    assert renderer_info(client)["videos_requested"] == 0


def test_a_render_job_succeeds_first_then_its_overlay_is_ready(client, clips):
    hooks = Hooks()
    try:
        job_id = upload(client, clips["crossing"], render="true", callback_url=hooks.url)
        job = wait_job(client, job_id)
        assert job["state"] == "succeeded" and {"json", "jsonl", "npz"} <= set(job["results"])
        assert result_frames(client, job) == 12
        assert job["overlay"]["state"] in ("pending", "ready")
        job = wait_overlay(client, job_id)
        assert job["overlay"] == {"state": "ready", "error": None} and "overlay" in job["results"]
        assert job["links"]["overlay"] == f"/v1/jobs/{job_id}/overlay.mp4"
        assert overlay_frames(client, job) == 12
        events = hooks.wait(2)
    finally:
        hooks.close()
    by_event = {e["event"]: e["job"] for e in events}
    assert sorted(by_event) == ["job.overlay_ready", "job.succeeded"]
    assert by_event["job.succeeded"]["state"] == "succeeded" and by_event["job.succeeded"]["id"] == job_id
    assert by_event["job.overlay_ready"]["overlay"] == {"state": "ready", "error": None}
    assert "overlay" in by_event["job.overlay_ready"]["results"]
    assert renderer_info(client)["videos_rendered"] >= 1


def test_an_input_the_renderer_cannot_read_fails_the_overlay_only(client, clips):
    """A media-folder job's video is replaced by a text file while it is tracked: the worker
    reads on from the file it opened, the job succeeds with every frame, and the Renderer, which
    opens the path afterwards, cannot draw: the overlay fails ``render_failed``."""
    media = clips["media"] / "swapped.mp4"
    media.write_bytes(clips["long"].read_bytes())
    hooks = Hooks()
    answers: list[httpx.Response] = []
    call = threading.Thread(target=lambda: answers.append(
        client.post("/pose/video", json={"video_path": "swapped.mp4", "render": True, "callback_url": hooks.url})
    ))
    call.start()
    try:
        deadline = time.monotonic() + 240
        while True:
            running = [j for j in client.get("/v1/jobs", params={"state": "running"}).json()["jobs"] if j["options"].get("source") == "media_dir"]
            if running and running[0]["progress"]["frames_done"] > 0:
                break
            assert time.monotonic() < deadline, "the media job never made progress"
            time.sleep(0.05)
        job_id = running[0]["id"]
        text = clips["media"] / "notes.txt"
        text.write_text("not a video any more\n")
        os.replace(text, media)
        call.join(timeout=300)
        assert answers and answers[0].status_code == 200, answers[0].text[:300] if answers else "no answer"
        assert len(answers[0].json()["frames"]) == FRAMES
        job = wait_overlay(client, job_id)
        assert job["state"] == "succeeded" and result_frames(client, job) == FRAMES
        assert job["overlay"]["state"] == "failed" and job["overlay"]["error"]["code"] == "render_failed", job["overlay"]
        assert "video_unsupported_format" in job["overlay"]["error"]["message"]
        assert "overlay" not in job["results"] and "overlay" not in job["links"]
        assert_error(client.get(f"/v1/jobs/{job_id}/overlay.mp4"), 500, "render_failed")
        events = hooks.wait(2)
    finally:
        hooks.close()
    assert sorted(e["event"] for e in events) == ["job.overlay_failed", "job.succeeded"]
    failed = next(e["job"] for e in events if e["event"] == "job.overlay_failed")
    assert failed["overlay"]["error"]["code"] == "render_failed"


@pytest.mark.parametrize("deployment", ["renderer", "tracker"])
def test_a_replica_killed_while_the_overlay_is_drawn_leaves_the_result_whole(client, clips, deployment):
    """SIGKILL of the Renderer replica drawing the overlay, or of the Tracker replica waiting for
    it: the job stays succeeded with every frame; the overlay is drawn again (the worker asks
    again; a dead worker's render lease runs out and a worker takes it) and ready, or failed
    ``renderer_unavailable`` once it was tried ``jobs.max_attempts`` times."""
    job_id = upload(client, clips["long"], render="true")
    job = wait_job(client, job_id)
    assert job["state"] == "succeeded" and result_frames(client, job) == FRAMES
    wait_rendering(client, job_id)
    victim = client.get("/v1/info").json()["deployments"][deployment]["pid"]
    os.kill(victim, signal.SIGKILL)
    job = wait_overlay(client, job_id, timeout=300)
    assert job["state"] == "succeeded" and result_frames(client, job) == FRAMES
    if job["overlay"]["state"] == "ready":
        assert overlay_frames(client, job) == FRAMES
    else:
        assert job["overlay"]["error"]["code"] == "renderer_unavailable", job["overlay"]
        assert_error(client.get(f"/v1/jobs/{job_id}/overlay.mp4"), 503, "renderer_unavailable")
    assert client.get("/v1/info").json()["deployments"][deployment]["pid"] != victim
