"""The shared video loop stopped and resumed from its checkpoints (no Ray): the three failure
cases of an asynchronous job, each against an uninterrupted run of the same clip.

* stopped after a checkpoint: the next attempt starts at the next chunk, result identical;
* stopped after the result files were written, before the job was marked done: a new attempt
  publishes the same bytes under its own name, never a mixed or doubled result;
* a transient stage failure mid-video: the loop goes back to its last checkpoint and goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from videos import crossing_video

from pipeline.errors import PoseError
from pipeline.tracking.state import load_state, save_state
from pipeline.video.loop import LocalStages, VideoLoop
from pipeline.video.npz import video_result_arrays
from pipeline.video.results import iter_json_document
from pipeline.video.runner import VideoRunner

CHUNK = 4


@pytest.fixture(scope="module")
def runner(tiny_roots) -> VideoRunner:
    from pipeline.tiny.cache import runner_settings

    settings = {**runner_settings(), "chunk_size": CHUNK}
    return VideoRunner.from_cache(tiny_roots, download=False, device="cpu", **settings)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return crossing_video(tmp_path_factory.mktemp("clips") / "crossing.mp4", n=14)


@pytest.fixture(scope="module")
def reference(runner, clip, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    files = runner.run_to(clip, out, vertices=True)
    document = json.loads(files.write_json(out / "result.json").read_bytes())
    assert document["tracks"], "the crossing clip should give confirmed tracks"
    return {"document": document, "files": files}


class _Died(Exception):
    """Stands for the worker process dying at this point."""


def _loop(runner: VideoRunner, stages=None) -> VideoLoop:
    return VideoLoop(stages or LocalStages(runner.detector, runner.hmr2), runner.appearance, runner.tracker_models,
                     chunk_size=CHUNK, limits=runner.limits, backoff_s=(0.01, 0.02))


def _document(work: Path, out: Path, token: int, loop_result) -> tuple[dict, dict[str, str]]:
    from pipeline.schema import MODEL_NAMES

    names = loop_result.writer.finalize(out, loop_result.meta, dict(MODEL_NAMES), suffix=f"a{token}")
    body = b"".join(iter_json_document(out / names["jsonl"], out / names["meta"]))
    return json.loads(body), names


def test_streamed_json_equals_the_document_and_npz_equals_its_arrays(reference):
    files, document = reference["files"], reference["document"]
    want = video_result_arrays(document)
    with np.load(files.npz, allow_pickle=False) as got:
        assert set(got.files) == set(want) - {"vertices"}
        for key in got.files:
            if key == "meta":
                assert json.loads(str(got[key])) == json.loads(str(want[key]))
            else:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with np.load(files.npz_vertices, allow_pickle=False) as got:
        people = sum(len(f["people"]) for f in document["frames"])
        assert got["vertices"].shape == (people, 6890, 3) and got["vertices"].dtype == np.float32
    lines = files.jsonl.read_text().splitlines()
    assert [json.loads(line) for line in lines] == document["frames"]
    assert all(p["vertices"] is None for f in document["frames"] for p in f["people"])


def test_died_after_a_checkpoint_resumes_at_the_next_chunk(runner, clip, reference, tmp_path):
    work, saved = tmp_path / "work", tmp_path / "checkpoint.npz"
    stop_after = 2

    def on_chunk(state, done, total, timings):
        save_state(state, saved, compress=False)
        if state["chunks"] == stop_after:
            raise _Died()

    with pytest.raises(_Died):
        _loop(runner).run(clip, work, token=1, vertices=True, on_chunk=on_chunk)
    state = load_state(saved)
    assert state["next_frame"] == stop_after * CHUNK
    seen: list[int] = []
    result = _loop(runner).run(clip, work, token=2, vertices=True, resume=state,
                               on_chunk=lambda s, done, total, t: seen.append(done))
    assert result.resumed_from == stop_after * CHUNK
    assert seen[0] == (stop_after + 1) * CHUNK  # the first chunk this attempt tracked is the next one
    document, names = _document(work, tmp_path, 2, result)
    assert document == reference["document"]
    with np.load(tmp_path / names["npz_vertices"]) as got, np.load(reference["files"].npz_vertices) as want:
        for key in want.files:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_died_after_writing_the_result_publishes_the_same_bytes(runner, clip, reference, tmp_path):
    work, saved = tmp_path / "work", tmp_path / "checkpoint.npz"
    first = _loop(runner).run(clip, work, token=1, on_chunk=lambda s, *a: save_state(s, saved, compress=False))
    doc1, names1 = _document(work, tmp_path, 1, first)
    # ... the process dies here, before the store records the job as done. The next attempt
    # resumes from the last checkpoint (after the last chunk) and publishes again.
    state = load_state(saved)
    assert state["next_frame"] == reference["document"]["video"]["frame_count"]
    second = _loop(runner).run(clip, work, token=2, resume=state)
    doc2, names2 = _document(work, tmp_path, 2, second)
    assert set(names1.values()).isdisjoint(names2.values())  # each attempt writes only its own names
    for key in ("jsonl", "meta", "npz"):
        assert (tmp_path / names1[key]).read_bytes() == (tmp_path / names2[key]).read_bytes(), key
    assert doc2 == doc1 == {**reference["document"]}


class _FlakyStages(LocalStages):
    """The local models, with the answer for chunk ``fail_at`` lost once (a replica died)."""

    def __init__(self, runner: VideoRunner, fail_at: int, code: str) -> None:
        super().__init__(runner.detector, runner.hmr2)
        self.calls, self.fail_at, self.code = 0, fail_at, code

    def submit(self, chunk):
        self.calls += 1
        run = super().submit(chunk)
        if self.calls != self.fail_at:
            return run

        def lost():
            raise RuntimeError("replica died")

        return lost

    def transient(self, exc):
        return PoseError(self.code, "a model replica is restarting", status=503) if isinstance(exc, RuntimeError) else None


@pytest.mark.parametrize("code", ["stage_unavailable", "overloaded"])
def test_transient_stage_failure_goes_back_one_checkpoint(runner, clip, reference, tmp_path, code):
    stages = _FlakyStages(runner, fail_at=3, code=code)
    seen: list[int] = []
    result = _loop(runner, stages).run(clip, tmp_path / "work", on_chunk=lambda s, done, total, t: seen.append(done))
    frames = reference["document"]["video"]["frame_count"]
    chunks = -(-frames // CHUNK)
    assert seen == [CHUNK * (i + 1) if CHUNK * (i + 1) < frames else frames for i in range(chunks)]
    # 3 chunks before the failure were submitted; after it, the loop resubmits from chunk 3 on.
    assert stages.calls == chunks + 2
    document, _ = _document(tmp_path / "work", tmp_path, 1, result)
    assert document == reference["document"]


def test_work_dropped_by_a_failure_is_cancelled(runner, clip, reference, tmp_path):
    """A chunk whose answers time out: its calls and those of the chunk submitted after it (the
    loop runs one ahead) are cancelled, nothing is waited for twice, and the result is the same."""

    class Calls:
        def __init__(self, run, fail: bool) -> None:
            self.run, self.fail, self.cancelled, self.waited = run, fail, False, False

        def __call__(self):
            self.waited = True
            if self.fail:
                raise TimeoutError("no answer in time")
            return self.run()

        def cancel(self) -> None:
            self.cancelled = True

    class Slow(LocalStages):
        def __init__(self) -> None:
            super().__init__(runner.detector, runner.hmr2)
            self.submitted: list[Calls] = []

        def submit(self, chunk):
            self.submitted.append(Calls(super().submit(chunk), fail=len(self.submitted) == 1))
            return self.submitted[-1]

        def transient(self, exc):
            return PoseError("stage_timeout", "too slow", status=503) if isinstance(exc, TimeoutError) else None

    stages = Slow()
    result = _loop(runner, stages).run(clip, tmp_path / "work")
    failed, ahead = stages.submitted[1], stages.submitted[2]
    assert failed.waited and failed.cancelled
    assert ahead.cancelled and not ahead.waited, "the chunk submitted ahead is dropped, not waited for"
    assert not any(c.cancelled for c in stages.submitted[3:]), "the retried chunks run to the end"
    document, _ = _document(tmp_path / "work", tmp_path, 1, result)
    assert document == reference["document"]


def test_persistent_stage_failure_fails_after_the_bounded_wait(runner, clip, tmp_path):
    class Down(LocalStages):
        def submit(self, chunk):
            def lost():
                raise RuntimeError("replica died")
            return lost

        def transient(self, exc):
            return PoseError("stage_unavailable", "the detector is down", status=503)

    loop = _loop(runner, Down(runner.detector, runner.hmr2))
    loop.max_stage_wait_s = 0.05
    with pytest.raises(PoseError) as err:
        loop.run(clip, tmp_path / "work")
    assert err.value.code == "stage_unavailable"


def test_a_checkpoint_of_another_format_is_refused(runner, clip, tmp_path):
    with pytest.raises(PoseError) as err:
        _loop(runner).run(clip, tmp_path / "work", resume={"format": "something-else", "version": 1})
    assert err.value.code == "job_checkpoint_invalid"
