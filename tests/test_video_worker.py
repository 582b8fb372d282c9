"""The video worker's own bookkeeping, without Ray: failures are recorded even when the store
falters, and the health check notices a worker loop that stopped going round."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from pipeline.errors import PoseError
from service.jobs import JobStore
from service.settings import JobSettings
from service.worker import VideoWorker

WORKER = VideoWorker  # the worker without its host (Serve's Tracker wraps one)


class FalteringStore:
    """The real store, except that its first ``failures`` calls of ``fail`` raise as a full disk would."""

    def __init__(self, store: JobStore, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def fail(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(28, "No space left on device")
        return self.store.fail(*args, **kwargs)


def _running_job(tmp_path, lease_s: float):
    store = JobStore(tmp_path / "data", max_active=1, max_queued=2)
    store.create("video")
    job = store.claim_next(lease_s)
    assert job is not None and job.state == "running"
    return store, job


def test_a_failure_is_recorded_after_the_store_comes_back(tmp_path):
    store, job = _running_job(tmp_path, lease_s=30.0)
    faltering = FalteringStore(store, failures=2)
    worker = SimpleNamespace(store=faltering, settings=JobSettings(data_dir=str(tmp_path / "data"), lease_s=30.0))
    WORKER._record_failure(worker, job.id, job.attempts, PoseError("video_corrupt", "bad frames"))
    got = store.get(job.id)
    assert faltering.calls == 3
    assert (got.state, got.error.code) == ("failed", "video_corrupt")
    store.close()


def test_a_failure_that_cannot_be_recorded_leaves_the_job_to_its_lease(tmp_path):
    store, job = _running_job(tmp_path, lease_s=1.5)
    faltering = FalteringStore(store, failures=10**6)
    worker = SimpleNamespace(store=faltering, settings=JobSettings(data_dir=str(tmp_path / "data"), lease_s=1.5))
    started = time.monotonic()
    WORKER._record_failure(worker, job.id, job.attempts, PoseError("video_corrupt", "bad frames"))
    assert time.monotonic() - started <= 1.5 + 0.5  # bounded by one lease
    assert faltering.calls >= 2 and store.get(job.id).state == "running"
    time.sleep(max(0.0, store.get(job.id).lease_until - time.time()) + 0.1)
    report = store.expire_leases(max_attempts=3)
    assert report.requeued == [job.id] and store.get(job.id).state == "queued"  # taken over, not stuck
    store.close()


def test_health_check_fails_when_the_worker_loop_stalls_or_stops(tmp_path):
    async def scenario() -> None:
        settings = JobSettings(data_dir=str(tmp_path), poll_interval_s=1.0, lease_s=30.0)
        running = asyncio.get_running_loop().create_future()
        worker = SimpleNamespace(settings=settings, _loop_task=running, _loop_beat=time.monotonic())
        await WORKER.check_health(worker)  # went round just now: healthy
        worker._loop_beat = time.monotonic() - 61.0  # stuck past max(60 s, 10 polls, 2 leases)
        with pytest.raises(RuntimeError, match="has not gone round"):
            await WORKER.check_health(worker)
        worker._loop_beat = time.monotonic()
        running.set_result(None)  # the loop ended
        with pytest.raises(RuntimeError, match="stopped"):
            await WORKER.check_health(worker)

    asyncio.run(scenario())


def test_jobs_handed_back_by_stopping_workers_are_not_crashes(tmp_path):
    """Three workers stopped gracefully (scale-down, redeploy, SIGTERM) while they run the job,
    then one that dies: with max_attempts 3 the job is queued again, not failed."""
    settings = JobSettings(data_dir=str(tmp_path / "data"), lease_s=30.0, max_attempts=3)
    with JobStore(tmp_path / "data", max_active=1, max_queued=2) as store:
        created = store.create("video")
        for _ in range(3):
            job = store.claim_next(settings.lease_s, limit_running=False)
            worker = SimpleNamespace(store=store, _tokens={job.id: job.attempts}, _stopping=False)
            WORKER.stop(worker)
            assert worker._stopping and store.get(job.id).state == "queued"
        store.claim_next(0.05, limit_running=False)  # this worker dies: its lease runs out
        time.sleep(0.1)
        report = store.expire_leases(settings.max_attempts, settings.stall_s)
        got = store.get(created.id)
        assert report.requeued == [created.id] and (got.state, got.attempts, got.crashes) == ("queued", 4, 1)


def test_stall_s_must_outlast_the_longest_chunk(tmp_path):
    assert JobSettings(data_dir=str(tmp_path)).stall_s == 1800.0
    assert JobSettings(data_dir=str(tmp_path), stall_s=None).stall_s is None
    with pytest.raises(ValueError, match="stall_s above stage_timeout_s"):
        JobSettings(data_dir=str(tmp_path), stall_s=700.0)  # 600 s stage timeout + 120 s of retries


def _bare_worker(store: JobStore, tmp_path, process) -> SimpleNamespace:
    """The worker's own `_run` around ``process`` (its model work), without models or a loop."""
    worker = SimpleNamespace(
        store=store, settings=JobSettings(data_dir=str(tmp_path / "data"), lease_s=30.0), unwrap=lambda e: e,
        map_error=lambda e: None, _tokens={}, _active={}, _delete_when_stopped=set(), _wake=asyncio.Event(),
        _process=process, _heartbeat=lambda job_id, token: asyncio.sleep(3600),
        _schedule_callback=lambda job_id: None,
    )
    for name in ("_as_job_error", "_hand_back", "_record_failure", "_clean_after_finish"):
        setattr(worker, name, getattr(WORKER, name).__get__(worker))
    return worker


def test_a_job_store_outage_mid_job_stops_the_attempt_and_never_fails_the_job(tmp_path):
    """The store stayed away past the worker's retry bound while a chunk was saved: the attempt
    stops and hands the job back; the job is not failed and no crash is counted."""
    store, job = _running_job(tmp_path, lease_s=30.0)

    def process(job, token):
        raise PoseError("job_store_unavailable", "the job store did not answer for 30.0 s", status=503)

    asyncio.run(WORKER._run(_bare_worker(store, tmp_path, process), job))
    got = store.get(job.id)
    assert (got.state, got.error, got.crashes) == ("queued", None, 0)
    assert store.claim_next(30.0).checkpoint == got.checkpoint  # the next attempt resumes where it was
    store.close()


def test_a_permanent_database_error_fails_the_job_with_its_cause(tmp_path):
    store, job = _running_job(tmp_path, lease_s=30.0)

    def process(job, token):
        with store._tx() as db:
            db.execute("UPDATE jobs SET no_such_column = 1")

    asyncio.run(WORKER._run(_bare_worker(store, tmp_path, process), job))
    got = store.get(job.id)
    assert got.state == "failed" and got.error.code == "job_store_error" and "no_such_column" in got.error.message
    store.close()
