"""Frame ranges (`pipeline.video.frame_range`) without Ray: the checks and their codes, the
decoder returning only the range's frames with the whole video's indices and times, the CLI end
to end against a full run of the same clip, the overlay of a ranged result, and a range resumed
from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from videos import crossing_video

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.video.decode import iter_frames
from pipeline.video.frame_range import FrameRange

FPS, FRAMES, CHUNK = 10, 14, 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crossing_video(tmp_path_factory.mktemp("clips") / "crossing.mp4", n=FRAMES, fps=FPS)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def video_cli(clip: Path, out: Path, tiny_roots: Any, *extra: str) -> list[str]:
    return ["video", str(clip), "--out", str(out), "--cache-dir", str(tiny_roots.lock.parent), "--device", "cpu",
            "--profile", "tiny", "--chunk-size", str(CHUNK), "--no-progress", *extra]


# -- the checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        ({"start_frame": 5, "end_frame": 5}, "frame_range_empty"),
        ({"start_frame": 9, "end_frame": 3}, "frame_range_empty"),
        ({"end_frame": 0}, "frame_range_empty"),
        ({"start_s": 1.0, "end_s": 0.5}, "frame_range_empty"),
        ({"start_frame": -2}, "frame_range_negative"),
        ({"end_frame": -3}, "frame_range_negative"),
        ({"start_s": -0.5}, "frame_range_negative"),
        ({"end_s": -1}, "frame_range_negative"),
        ({"start_frame": 1, "end_s": 2.0}, "frame_range_mixed"),
        ({"start_frame": "three"}, "frame_range_invalid"),
        ({"start_frame": 2.5}, "frame_range_invalid"),
        ({"start_s": "nan"}, "frame_range_invalid"),
        ({"end_s": float("inf")}, "frame_range_invalid"),
    ],
)
def test_bad_ranges_are_refused_with_their_code(asked: dict[str, Any], code: str) -> None:
    with pytest.raises(InputError) as err:
        FrameRange.of(**asked)
    assert err.value.code == code and err.value.status == 422


def test_ranges_as_phalp_spells_them() -> None:
    assert FrameRange.of() is None
    assert FrameRange.of(end_frame=-1) is None  # PHALP's "to the end"
    assert FrameRange.of(start_frame="3", end_frame="9") == FrameRange(start_frame=3, end_frame=9)  # form fields
    assert FrameRange.of(start_frame=3, end_frame=-1) == FrameRange(start_frame=3)
    assert FrameRange.of(start_s="0.25") == FrameRange(start_s=0.25)
    assert FrameRange(start_frame=3, end_frame=9).to_options() == {"start_frame": 3, "end_frame": 9}
    assert FrameRange.from_options({"start_s": 0.5, "vertices": True}) == FrameRange(start_s=0.5)
    assert FrameRange(start_frame=10, end_frame=99).expected_frames(FRAMES, True) == FRAMES - 10
    with pytest.raises(InputError) as err:
        FrameRange(start_frame=FRAMES).check_video(FRAMES, True, FRAMES / FPS)
    assert err.value.code == "frame_range_past_end"
    FrameRange(start_frame=FRAMES).check_video(FRAMES, False, 0.0)  # a count that is a guess: checked while decoding


# -- the decoder -----------------------------------------------------------------------------------


def _decoded(clip: Path, frame_range: FrameRange, start_frame: int = 0) -> tuple[list[int], list[float]]:
    chunks = list(iter_frames(clip, chunk_size=CHUNK, frame_range=frame_range, start_frame=start_frame))
    for chunk in chunks:
        assert chunk.indices.tolist() == list(range(chunk.start, chunk.start + len(chunk)))
    return [i for c in chunks for i in c.indices.tolist()], [t for c in chunks for t in c.timestamps.tolist()]


def test_the_decoder_returns_the_range_with_the_videos_indices_and_times(clip: Path) -> None:
    indices, times = _decoded(clip, FrameRange(start_frame=3, end_frame=9))
    assert indices == [3, 4, 5, 6, 7, 8]
    np.testing.assert_allclose(times, [i / FPS for i in indices], atol=1e-6)
    # seconds: start inclusive, end exclusive, on each frame's own time stamp
    assert _decoded(clip, FrameRange(start_s=0.3, end_s=0.7))[0] == [3, 4, 5, 6]
    assert _decoded(clip, FrameRange(start_s=0.25, end_s=0.65))[0] == [3, 4, 5, 6]
    assert _decoded(clip, FrameRange(start_frame=10))[0] == [10, 11, 12, 13]
    assert _decoded(clip, FrameRange(end_frame=100))[0] == list(range(FRAMES))
    # resuming inside a range: from the checkpoint's frame to the range's end
    assert _decoded(clip, FrameRange(start_frame=3, end_frame=9), start_frame=5)[0] == [5, 6, 7, 8]
    # resuming after the range's last chunk: nothing left, and no error
    assert _decoded(clip, FrameRange(start_frame=3, end_frame=9), start_frame=9)[0] == []


@pytest.mark.parametrize(
    ("frame_range", "code"),
    [
        (FrameRange(start_frame=FRAMES), "frame_range_past_end"),
        (FrameRange(start_s=5.0), "frame_range_past_end"),
        (FrameRange(start_s=0.31, end_s=0.39), "frame_range_empty"),  # between two frames' time stamps
    ],
)
def test_a_range_without_frames_fails_while_decoding(clip: Path, frame_range: FrameRange, code: str) -> None:
    with pytest.raises(InputError) as err:
        list(iter_frames(clip, chunk_size=CHUNK, frame_range=frame_range))
    assert err.value.code == code and err.value.status == 422


# -- the command line, end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(clip: Path, tiny_roots: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("full") / "result.json"
    assert main(video_cli(clip, out, tiny_roots)) == 0
    document = json.loads(out.read_bytes())
    assert document["video"]["range"] is None and len(document["frames"]) == FRAMES
    assert sum(len(f["people"]) for f in document["frames"][3:9]) >= 6, "the tiny detector should find the drawn figures"
    return document


def _same_people(ranged: dict[str, Any], full: dict[str, Any]) -> None:
    """Per frame, the people of the ranged run are those of the full run: detections bit for bit,
    HMR2's numbers to float32 rounding (its crops are batched by chunk, and chunks differ)."""
    for frame in ranged["frames"]:
        want = full["frames"][frame["frame_index"]]
        assert frame["frame_index"] == want["frame_index"] and frame["time_s"] == want["time_s"]
        assert len(frame["people"]) == len(want["people"]), frame["frame_index"]
        for got, exp in zip(frame["people"], want["people"]):
            assert got["bbox"] == exp["bbox"] and got["score"] == exp["score"]
            for key in ("keypoints_2d", "keypoints_3d"):
                np.testing.assert_allclose(got[key], exp[key], rtol=1e-4, atol=1e-4, err_msg=key)
            np.testing.assert_allclose(got["smpl"]["betas"], exp["smpl"]["betas"], rtol=1e-4, atol=1e-4)


def test_cli_frame_range_keeps_the_videos_frame_numbers(clip, tiny_roots, full_run, tmp_path, capsys):
    out = tmp_path / "range.json"
    code, answer = run_cli(video_cli(clip, out, tiny_roots, "--start-frame", "3", "--end-frame", "9"), capsys)
    assert code == 0, answer
    assert answer["frames"] == 6
    doc = json.loads(out.read_bytes())
    assert [f["frame_index"] for f in doc["frames"]] == [3, 4, 5, 6, 7, 8]
    assert doc["video"]["frame_count"] == 6
    assert doc["video"]["range"] == {"start_frame": 3, "end_frame": 9, "requested": {"start_frame": 3, "end_frame": 9}}
    _same_people(doc, full_run)
    for track in doc["tracks"]:  # tracks live inside the range
        assert 3 <= track["first_frame"] <= track["last_frame"] <= 8


def test_cli_seconds_select_the_same_frames(clip, tiny_roots, full_run, tmp_path, capsys):
    frames_out, seconds_out = tmp_path / "frames.json", tmp_path / "seconds.json"
    assert run_cli(video_cli(clip, frames_out, tiny_roots, "--start-frame", "3", "--end-frame", "9"), capsys)[0] == 0
    code, answer = run_cli(video_cli(clip, seconds_out, tiny_roots, "--start-s", "0.25", "--end-s", "0.85"), capsys)
    assert code == 0, answer
    by_frames, by_seconds = json.loads(frames_out.read_bytes()), json.loads(seconds_out.read_bytes())
    assert by_seconds["video"]["range"]["requested"] == {"start_s": 0.25, "end_s": 0.85}
    assert (by_seconds["video"]["range"]["start_frame"], by_seconds["video"]["range"]["end_frame"]) == (3, 9)
    # the same frames through the same chunks: the same document but for the request
    by_seconds["video"]["range"]["requested"] = by_frames["video"]["range"]["requested"]
    assert by_seconds == by_frames


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--start-frame", "3", "--end-s", "1.0"], "frame_range_mixed"),
        (["--start-frame", "9", "--end-frame", "3"], "frame_range_empty"),
        (["--start-frame", "-1"], "frame_range_negative"),
        (["--start-frame", str(FRAMES)], "frame_range_past_end"),
    ],
)
def test_cli_refuses_bad_ranges(clip, tiny_roots, tmp_path, capsys, extra, code):
    status, answer = run_cli(video_cli(clip, tmp_path / "r.json", tiny_roots, *extra), capsys)
    assert status == 2 and answer["error"]["code"] == code, answer
    assert not (tmp_path / "r.json").exists()


def test_render_of_a_ranged_result_covers_the_range(clip, tiny_roots, tmp_path, capsys):
    import av

    result = tmp_path / "range.json"
    assert run_cli(video_cli(clip, result, tiny_roots, "--start-frame", "5", "--end-frame", "8"), capsys)[0] == 0
    out = tmp_path / "overlay.mp4"
    code, answer = run_cli(["render", str(clip), str(result), "--out", str(out), "--cache-dir", str(tiny_roots.lock.parent),
                            "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, answer
    assert answer["frames"] == 3
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


# -- resuming inside a range -----------------------------------------------------------------------


class _Died(Exception):
    """Stands for the worker process dying at this point."""


def test_a_range_resumes_from_its_checkpoint(clip, tiny_roots, tmp_path):
    from pipeline.schema import MODEL_NAMES
    from pipeline.tiny.cache import runner_settings
    from pipeline.tracking.state import load_state, save_state
    from pipeline.video.loop import LocalStages, VideoLoop
    from pipeline.video.results import iter_json_document
    from pipeline.video.runner import VideoRunner

    runner = VideoRunner.from_cache(tiny_roots, download=False, device="cpu", **{**runner_settings(), "chunk_size": CHUNK})

    def loop() -> VideoLoop:
        return VideoLoop(LocalStages(runner.detector, runner.hmr2), runner.appearance, runner.tracker_models,
                         chunk_size=CHUNK, limits=runner.limits)

    def document(result: Any, token: int) -> dict[str, Any]:
        names = result.writer.finalize(tmp_path, result.meta, dict(MODEL_NAMES), suffix=f"a{token}")
        return json.loads(b"".join(iter_json_document(tmp_path / names["jsonl"], tmp_path / names["meta"])))

    frame_range = FrameRange(start_frame=2, end_frame=13)
    progress: list[tuple[int, int | None]] = []
    whole = loop().run(clip, tmp_path / "whole", frame_range=frame_range,
                       on_chunk=lambda s, done, total, t: progress.append((done, total)))
    assert progress == [(4, 11), (8, 11), (11, 11)]  # frames of the range, out of the range's
    reference = document(whole, 1)
    assert [f["frame_index"] for f in reference["frames"]] == list(range(2, 13))

    saved = tmp_path / "checkpoint.npz"

    def on_chunk(state: dict[str, Any], done: int, total: int | None, timings: dict[str, float]) -> None:
        save_state(state, saved, compress=False)
        if state["chunks"] == 1:
            raise _Died()

    with pytest.raises(_Died):
        loop().run(clip, tmp_path / "work", token=2, frame_range=frame_range, on_chunk=on_chunk)
    state = load_state(saved)
    assert (state["first_frame"], state["next_frame"]) == (2, 6)
    seen: list[int] = []
    resumed = loop().run(clip, tmp_path / "work", token=3, frame_range=frame_range, resume=state,
                         on_chunk=lambda s, done, total, t: seen.append(done))
    assert resumed.resumed_from == 6 and seen == [8, 11]
    assert document(resumed, 3) == reference


def test_the_worker_resumes_a_range_job_from_its_checkpoint(clip, tiny_roots, tmp_path):
    """The job row keeps the range; a second attempt after a death resumes inside it and the
    result is the uninterrupted run's (the video worker without its host: no Ray)."""
    from types import SimpleNamespace

    from pipeline.tiny.cache import runner_settings
    from pipeline.video.loop import LocalStages, VideoLoop
    from pipeline.video.results import iter_json_document
    from pipeline.video.runner import VideoRunner
    from service.jobs import JobStore
    from service.settings import ModelSettings
    from service.worker import VideoWorker

    runner = VideoRunner.from_cache(tiny_roots, download=False, device="cpu", **{**runner_settings(), "chunk_size": CHUNK})
    reference = runner.run(clip, frame_range=FrameRange(start_frame=2, end_frame=13)).model_dump(mode="json")

    store = JobStore(tmp_path / "data")
    worker = VideoWorker.__new__(VideoWorker)  # its job processing only: no background loop
    worker.store, worker.settings = store, SimpleNamespace(lease_s=30.0)
    worker.models = ModelSettings(profile="tiny")  # the detector the result names
    worker.loop = VideoLoop(LocalStages(runner.detector, runner.hmr2), runner.appearance, runner.tracker_models,
                            chunk_size=CHUNK, limits=runner.limits)
    created = store.create("video", input_file=clip, options=FrameRange.of(start_frame=2, end_frame=13).to_options())
    first = store.claim_next(30.0)
    assert first is not None and first.options == {"start_frame": 2, "end_frame": 13}
    commit = store.save_checkpoint

    def commit_then_die(*args: Any, **kwargs: Any) -> None:
        commit(*args, **kwargs)
        raise _Died()

    store.save_checkpoint = commit_then_die  # type: ignore[method-assign]
    with pytest.raises(_Died):
        worker._process(first, first.attempts)
    store.save_checkpoint = commit  # type: ignore[method-assign]
    store.release(created.id, first.attempts)
    second = store.claim_next(30.0)
    assert second is not None and second.checkpoint is not None
    assert (second.checkpoint["next_frame"], second.checkpoint["frames_done"]) == (6, 4)
    assert second.to_dict()["progress"]["frames_done"] == 4 and second.frames_total == 11
    names = worker._process(second, second.attempts)
    done = store.get(created.id)
    assert (done.frames_done, done.frames_total, done.checkpoint["resumed_from"]) == (11, 11, 6)
    folder = store.job_dir(created.id)
    got = json.loads(b"".join(iter_json_document(folder / names["jsonl"], folder / names["meta"])))
    assert got == reference
