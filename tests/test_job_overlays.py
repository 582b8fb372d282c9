"""A render job's overlay in the job store (`service.jobs.overlays`), on SQLite and PostgreSQL:
its own state after the job succeeds, claims fenced by their try, lost renders taken again, a
bounded number of tries, and the document callers see."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

from pipeline.errors import PoseError
from service.jobs import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    s = JobStore(tmp_path / "data", url=url, max_active=4, max_queued=8)
    yield s
    with contextlib.suppress(Exception):
        s.close()


def _succeeded(store: JobStore, render: bool = True) -> str:
    """A job that ran and published its result files."""
    job = store.create("video", options={"render": render})
    claimed = store.claim_next(30.0)
    assert claimed is not None and claimed.id == job.id
    store.write_result(job.id, "result.jsonl", b"{}\n")
    store.write_result(job.id, "result-meta.json", b"{}")
    done = store.finish(job.id, {"jsonl": "result.jsonl", "meta": "result-meta.json"}, claimed.attempts)
    assert done.state == "succeeded"
    return job.id


def test_a_render_job_succeeds_with_its_overlay_pending_then_ready(store):
    job_id = _succeeded(store)
    job = store.get(job_id)
    assert job.state == "succeeded" and job.to_dict()["overlay"] == {"state": "pending", "error": None}
    assert store.pending_overlays() == [job_id]
    claim = store.claim_overlay(job_id, lease_s=30.0, max_tries=3)
    assert (claim.outcome, claim.token) == ("claimed", 1)
    assert store.pending_overlays() == []  # leased
    assert store.claim_overlay(job_id, 30.0, 3).outcome == "busy"
    store.renew_overlay(job_id, 1, 30.0)
    store.write_result(job_id, "overlay-r1.mp4", b"mp4")
    ready = store.overlay_ready(job_id, 1, "overlay-r1.mp4")
    assert ready.to_dict()["overlay"] == {"state": "ready", "error": None}
    assert ready.result_paths["overlay"].name == "overlay-r1.mp4" and "jsonl" in ready.result_paths
    assert store.claim_overlay(job_id, 30.0, 3).outcome == "done"


def test_a_job_without_render_has_no_overlay(store):
    job_id = _succeeded(store, render=False)
    assert store.get(job_id).to_dict()["overlay"] is None
    assert store.pending_overlays() == []
    assert store.claim_overlay(job_id, 30.0, 3).outcome == "done"


def test_no_overlay_before_the_result_nor_for_a_failed_job(store):
    job = store.create("video", options={"render": True})
    assert store.get(job.id).to_dict()["overlay"] == {"state": "pending", "error": None}  # will come after the result
    assert store.claim_overlay(job.id, 30.0, 3).outcome == "done"  # nothing to draw yet
    store.fail(job.id, "video_corrupt", "bad frames")
    assert store.get(job.id).to_dict()["overlay"] is None
    assert store.pending_overlays() == []


def test_a_failed_render_keeps_the_result(store):
    job_id = _succeeded(store)
    token = store.claim_overlay(job_id, 30.0, 3).token
    failed = store.overlay_failed(job_id, token, "render_failed", "the overlay could not be drawn: video_unreadable: gone")
    assert failed.state == "succeeded" and {"jsonl", "meta"} <= set(failed.result_paths)
    assert failed.to_dict()["overlay"]["state"] == "failed"
    assert failed.to_dict()["overlay"]["error"]["code"] == "render_failed"
    assert store.pending_overlays() == []


def test_a_lost_render_is_taken_again_and_the_old_try_can_publish_nothing(store):
    job_id = _succeeded(store)
    first = store.claim_overlay(job_id, lease_s=0.0, max_tries=3)  # a lease already run out: its worker died
    assert first.token == 1
    assert store.pending_overlays() == [job_id]
    second = store.claim_overlay(job_id, 30.0, 3)
    assert (second.outcome, second.token) == ("claimed", 2)
    store.write_result(job_id, "overlay-r1.mp4", b"late")
    for stale in (lambda: store.overlay_ready(job_id, 1, "overlay-r1.mp4"), lambda: store.renew_overlay(job_id, 1),
                  lambda: store.overlay_failed(job_id, 1, "render_failed", "x")):
        with pytest.raises(PoseError) as info:
            stale()
        assert info.value.code == "attempt_superseded"
    store.release_overlay(job_id, 2)  # the Renderer did not answer: free for the next try at once
    assert store.claim_overlay(job_id, 30.0, 3).token == 3


def test_a_render_lease_is_judged_on_the_database_clock_not_the_nodes(store, monkeypatch):
    """A render claimed by a node whose clock is an hour behind, looked at by a node an hour
    ahead: still held, because both ask the database for the time."""
    import service.jobs.store as store_module

    job_id = _succeeded(store)
    real = store_module.time.time
    monkeypatch.setattr(store_module.time, "time", lambda: real() - 3600)
    claim = store.claim_overlay(job_id, 30.0, 3)
    store.renew_overlay(job_id, claim.token, 30.0)
    monkeypatch.setattr(store_module.time, "time", lambda: real() + 3600)
    assert store.pending_overlays() == []
    assert store.claim_overlay(job_id, 30.0, 3).outcome == "busy"


def test_renders_are_tried_a_bounded_number_of_times(store):
    job_id = _succeeded(store)
    for token in (1, 2):
        assert store.claim_overlay(job_id, 0.0, max_tries=2).token == token
    assert store.claim_overlay(job_id, 30.0, max_tries=2).outcome == "exhausted"
    overlay = store.get(job_id).to_dict()["overlay"]
    assert overlay["state"] == "failed" and overlay["error"]["code"] == "renderer_unavailable"
    assert store.get(job_id).state == "succeeded"


def test_a_database_of_the_previous_schema_gains_the_overlay_columns(tmp_path):
    """A jobs table made before overlays had a state: the columns are added on open, and an old
    render job that succeeded with its overlay reads as ready."""
    data = tmp_path / "data"
    JobStore(data).close()
    db = sqlite3.connect(data / "jobs.sqlite3")
    for column in ("overlay_state", "overlay_error_code", "overlay_error_message", "overlay_tries", "overlay_lease_until"):
        db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    (data / "jobs" / ("a" * 32)).mkdir(parents=True)
    (data / "jobs" / ("a" * 32) / "overlay.mp4").write_bytes(b"mp4")
    db.execute(
        "INSERT INTO jobs (id, seq, kind, state, created_at, updated_at, options, results) VALUES (?, 1, 'video', 'succeeded', 0, 0, ?, ?)",
        ("a" * 32, json.dumps({"render": True}), json.dumps({"overlay": "overlay.mp4"})),
    )
    db.commit()
    db.close()
    with JobStore(data) as store:
        assert store.get("a" * 32).to_dict()["overlay"] == {"state": "ready", "error": None}
        assert store.pending_overlays() == []
