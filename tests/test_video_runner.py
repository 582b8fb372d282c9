"""The in-process video runner on generated clips with the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
from videos import crossing_video, figure_frame, write_video

from pipeline.errors import InputError
from pipeline.schema import VideoResult
from pipeline.video.runner import VideoRunner


@pytest.fixture(scope="module")
def runner(tiny_roots) -> VideoRunner:
    from pipeline.tiny.cache import runner_settings

    return VideoRunner.from_cache(tiny_roots, download=False, device="cpu", **runner_settings())


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    return crossing_video(tmp_path_factory.mktemp("clips") / "crossing.mp4")


@pytest.fixture(scope="module")
def crossing_result(runner, crossing) -> VideoResult:
    return runner.run(crossing)


def test_result_follows_the_published_schema(crossing_result):
    document = json.loads(crossing_result.model_dump_json())
    jsonschema.validate(document, VideoResult.model_json_schema())
    assert document["video"]["frame_count"] == len(document["frames"]) == 12
    assert document["video"]["width"] == 640 and document["video"]["height"] == 360
    times = [f["time_s"] for f in document["frames"]]
    assert times == sorted(times) and times[1] == pytest.approx(0.1)


def test_people_are_tracked_with_stable_ids(crossing_result):
    assert crossing_result.tracks, "the tiny models should yield at least one confirmed track"
    ids_per_frame = [[p.track_id for p in f.people if p.track_id is not None] for f in crossing_result.frames]
    for ids in ids_per_frame:
        assert len(ids) == len(set(ids)), "a track id appears twice in one frame"
    # Back-filling: a confirmed track carries its id from its first frame on.
    first = {t.track_id: t.first_frame for t in crossing_result.tracks}
    assert min(first.values()) == 0
    for t in crossing_result.tracks:
        frames = [f.frame_index for f in crossing_result.frames if any(p.track_id == t.track_id for p in f.people)]
        assert frames[0] == t.first_frame and frames[-1] == t.last_frame and len(frames) == t.num_frames


def test_video_without_people_is_a_valid_empty_result(runner, tmp_path):
    clip = write_video(tmp_path / "empty.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 4)
    result = runner.run(clip)
    assert len(result.frames) == 4 and all(f.people == [] for f in result.frames) and result.tracks == []


def test_single_frame_video(runner, tmp_path):
    clip = write_video(tmp_path / "one.mp4", [figure_frame([320])])
    result = runner.run(clip)
    assert len(result.frames) == 1


def test_not_a_video_is_refused(runner, tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_text("#EXTM3U\n/etc/passwd\n")
    with pytest.raises(InputError) as info:
        runner.run(bad)
    assert info.value.code == "video_unsupported_format"


def test_cancel_between_chunks(runner, crossing):
    with pytest.raises(Exception) as info:
        runner.run(crossing, should_stop=lambda: True)
    assert getattr(info.value, "code", None) == "cancelled"


def test_cli_video_writes_the_result(tiny_roots, crossing, tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "pipeline", "video", str(crossing), "--cache-dir", str(tiny_roots.hmr2.parent),
           "--offline", "--out", str(out), "--no-progress", "--profile", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["frames"] == 12
    assert len(json.loads(out.read_text())["frames"]) == 12


def test_cli_video_out_dir_writes_every_file(tiny_roots, crossing, tmp_path):
    out_dir = tmp_path / "files"
    cmd = [sys.executable, "-m", "pipeline", "video", str(crossing), "--cache-dir", str(tiny_roots.hmr2.parent),
           "--offline", "--out-dir", str(out_dir), "--vertices", "--no-progress", "--profile", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out_dir.iterdir()) == ["result-meta.json", "result-vertices.npz", "result.jsonl", "result.npz"]
    frames = [json.loads(line) for line in (out_dir / "result.jsonl").read_text().splitlines()]
    assert len(frames) == 12 and all(p["vertices"] is None for f in frames for p in f["people"])
    with np.load(out_dir / "result-vertices.npz", allow_pickle=False) as arrays:
        assert arrays["vertices"].shape == (sum(len(f["people"]) for f in frames), 6890, 3)


def test_cli_says_what_the_tiny_models_are_when_they_find_no_one(tiny_roots, runner, tmp_path, caplog):
    """Tiny models (here found in --cache-dir, no profile named) and no one found: one warning on
    stderr, the same document as ever."""
    import logging

    import cv2

    from pipeline.cli import _noted
    from pipeline.schema import ImageResult
    from pipeline.tiny import TINY_NOTE, is_tiny_detector

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    cmd = [sys.executable, "-m", "pipeline", "image", str(blank), "--cache-dir", str(tiny_roots.hmr2.parent), "--offline"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["people"] == [] and document.keys() == ImageResult.model_fields.keys()
    assert f"WARNING pipeline.image: no one found: {TINY_NOTE}" in done.stderr

    # a video in which no one is tracked (the command's last step, on the runner it loaded)
    clip = write_video(tmp_path / "empty.mp4", [np.full((240, 320, 3), 128, np.uint8)] * 2)
    files = runner.run_to(clip, tmp_path / "out")
    assert files.tracks == 0 and is_tiny_detector(runner.detector) and not is_tiny_detector(object())
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert _noted(runner, files) is files
    assert caplog.messages == [f"no one tracked: {TINY_NOTE}"]


def test_cli_video_vertices_need_the_binary_form(tiny_roots, crossing):
    cmd = [sys.executable, "-m", "pipeline", "video", str(crossing), "--cache-dir", str(tiny_roots.hmr2.parent),
           "--offline", "--vertices", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "vertices_npz_only"


def test_result_streams_to_stdout(tiny_roots, crossing_result, crossing):
    cmd = [sys.executable, "-m", "pipeline", "video", str(crossing), "--cache-dir", str(tiny_roots.hmr2.parent),
           "--offline", "--no-progress", "--profile", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == json.loads(crossing_result.model_dump_json())
