"""The detector chosen per deployment (``detector: regnety``) serves images and video jobs, and
every document says which detector ran; the CLI's ``--detector`` gives the served answer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import encode, pipeline_cli, serve_tiny, stick_figures, wait_job  # noqa: E402


@pytest.fixture(scope="module")
def service(tiny_dir: Path) -> Iterator[str]:
    with serve_tiny(tiny_dir, detector="regnety", auth="none") as url:
        yield url


@pytest.fixture(scope="module")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=300.0) as c:
        yield c


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    path.write_bytes(encode(stick_figures()))
    return path


def test_info_names_the_detector(client: httpx.Client) -> None:
    detector = client.get("/v1/info").json()["deployments"]["detector"]
    assert detector["model"] == "regnety"
    assert detector["model_id"] == "regnety_4gf_mask_rcnn"
    # demo.py's settings: the box predictor keeps scores > 0.5, detectron2's 800-px test resize
    assert (detector["score_thresh"], detector["stage_score_thresh"], detector["input_size"]) == (0.5, 0.5, 800)
    assert list(detector["files"]) == ["regnety.checkpoint"] and detector["files"]["regnety.checkpoint"]["sha256"]


def test_image_through_regnety_equals_the_cli(client: httpx.Client, scene_png: Path, tiny_dir: Path) -> None:
    resp = client.post("/v1/images", files={"image": ("scene.png", scene_png.read_bytes(), "image/png")})
    assert resp.status_code == 200, resp.text[:500]
    served = resp.json()
    assert served["models"] == {"detector": "regnety_4gf_mask_rcnn", "mesh": "hmr2.0b"}
    assert served["people"], "the tiny RegNetY finds the drawn figures"
    document, _ = pipeline_cli("image", "--profile", "tiny", "--detector", "regnety", "--offline", str(scene_png), tiny_dir=tiny_dir)
    assert document == served
    vitdet, _ = pipeline_cli("image", "--profile", "tiny", "--offline", str(scene_png), tiny_dir=tiny_dir)
    assert vitdet["models"]["detector"] == "vitdet_h_cascade"


def test_video_job_names_the_detector(client: httpx.Client, tmp_path: Path) -> None:
    from pipeline.tiny.media import write_demo_media

    clip = write_demo_media(tmp_path)["clip"]
    resp = client.post("/v1/videos", files={"video": (clip.name, clip.read_bytes(), "video/mp4")})
    assert resp.status_code == 202, resp.text[:500]
    job = wait_job(client, resp.json()["id"], timeout=600)
    assert job["state"] == "succeeded", job
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["models"] == {"detector": "regnety_4gf_mask_rcnn", "mesh": "hmr2.0b", "tracker": "phalp"}
    assert any(frame["people"] for frame in result["frames"])


def test_cascade_threshold_refused_for_regnety() -> None:
    from deployments.app import AppArgs, build_app

    with pytest.raises(ValueError, match="stage_score_thresh applies to ViTDet"):
        build_app(AppArgs(profile="tiny", detector="regnety", stage_score_thresh=0.3))


def test_unknown_detector_is_refused_by_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "image", str(tmp_path / "x.png"), "--detector", "yolo"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "invalid choice: 'yolo'" in done.stderr
