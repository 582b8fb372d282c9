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
        worker = SimpleNamespace(settings=settings, _loop_task=running, _loop_beat=time.monotonic(), _serving=True)
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


def test_a_worker_stopped_while_it_claims_hands_the_job_straight_back(tmp_path):
    """The host stops the worker (`stop`) while the worker loop's claim runs in its thread: the
    job that claim took goes back to the queue at once, a hand-off rather than a lease left to
    run out (a crash), and the stopped worker claims nothing more."""
    settings = JobSettings(data_dir=str(tmp_path / "data"), lease_s=30.0, max_attempts=3, max_active=2)
    with JobStore(tmp_path / "data", max_active=2, max_queued=4) as store:
        first, second = store.create("video"), store.create("video")

        class StoppedDuringClaim:
            """The real store; the worker is stopped while `claim_next` runs."""

            def __getattr__(self, name: str):
                return getattr(store, name)

            def claim_next(self, *args, **kwargs):
                job = store.claim_next(*args, **kwargs)
                WORKER.stop(worker)
                return job

        started: list[str] = []
        worker = SimpleNamespace(
            store=StoppedDuringClaim(), settings=settings, _stopping=False, _tokens={}, _overlay_tokens={}, _active={},
            _room_to_run=lambda: True, _schedule_ended=lambda job_id: None,
            _run=lambda job: asyncio.sleep(0, started.append(job.id)),
        )
        asyncio.run(WORKER._claim_jobs(worker))
        assert worker._active == {} and started == []
        got = store.get(first.id)
        assert (got.state, got.attempts, got.crashes) == ("queued", 1, 0)
        assert (store.get(second.id).state, store.get(second.id).attempts) == ("queued", 0)


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
        _process=process, _keep_lease=lambda renew, job_id, token: asyncio.sleep(3600),
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


def test_disk_full_is_the_disks_failure_not_the_jobs():
    import errno

    from service.worker import disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise PoseError("internal_error", "writing the checkpoint failed") from exc
    except PoseError as wrapped:
        got = disk_full(wrapped)
    assert got is not None and (got.code, got.status) == ("storage_full", 507)
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("no")) is None


def test_a_job_that_cannot_write_waits_queued_with_the_reason_and_resumes_when_room_returns(tmp_path, monkeypatch):
    """The disk fills up under a running job: it goes back to the queue (not failed, no crash
    counted) showing ``waiting: storage_full``, no job is claimed while the disk stays full, and
    it resumes from its checkpoint and succeeds once there is room."""
    import errno
    import shutil

    from videos import crossing_video

    import service.worker as worker_module
    from pipeline.tiny.cache import runner_settings
    from pipeline.video.loop import LocalStages
    from pipeline.video.runner import VideoRunner
    from service.settings import ModelSettings

    models = ModelSettings(profile="tiny", tiny_dir=str(tmp_path / "tiny"))
    runner = VideoRunner.from_cache(models.roots(), download=False, device="cpu", **runner_settings())
    clip = crossing_video(tmp_path / "crossing.mp4", n=12)
    settings = JobSettings(data_dir=str(tmp_path / "data"), poll_interval_s=0.2, lease_s=30.0, chunk_size=4)
    disk = {"full": False, "writes": 0}
    real_save, real_usage = worker_module._save_checkpoint, shutil.disk_usage

    def save(state, path):
        disk["writes"] += 1
        if disk["writes"] == 2:  # the second chunk's checkpoint finds the disk full
            disk["full"] = True
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, path)

    def usage(path):
        total, used, free = real_usage(path)
        return shutil._ntuple_diskusage(total, total if disk["full"] else used, 0 if disk["full"] else free)

    monkeypatch.setattr(worker_module, "_save_checkpoint", save)
    monkeypatch.setattr(worker_module.shutil, "disk_usage", usage)

    async def scenario() -> None:
        store = settings.open_store()
        job = store.create("video", input_file=clip)
        worker = VideoWorker(LocalStages(runner.detector, runner.hmr2), settings, models, map_error=lambda exc: None)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and store.get(job.id).to_dict()["waiting"] is None:
                await asyncio.sleep(0.1)
            waiting = store.get(job.id)
            shown = waiting.to_dict()
            assert shown["state"] == "queued" and shown["error"] is None
            assert shown["waiting"]["code"] == "storage_full"
            assert (waiting.attempts, waiting.crashes) == (1, 0) and waiting.checkpoint["next_frame"] == 4
            await asyncio.sleep(1.0)  # five polls on a full disk: the job is not claimed again
            assert store.get(job.id).state == "queued" and store.get(job.id).attempts == 1
            disk["full"] = False
            while time.monotonic() < deadline and store.get(job.id).state != "succeeded":
                await asyncio.sleep(0.1)
            done = store.get(job.id)
            assert done.state == "succeeded" and done.to_dict()["waiting"] is None
            assert (done.attempts, done.crashes, done.frames_done) == (2, 0, 12)
            assert done.checkpoint["resumed_from"] == 4  # it went on from its checkpoint
        finally:
            worker.stop()
            store.close()

    asyncio.run(scenario())


class _Receiver:
    """A callback receiver on loopback: every POST's event id and body, in order."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers.get("X-Pose-Event-Id"), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_worker_whose_host_kills_starting_replicas_claims_only_once_its_health_is_checked(tmp_path):
    """Serve kills a replica stopped while it is still STARTING without a graceful stop, and
    health-checks RUNNING replicas only: the Tracker's worker claims nothing before the first
    check, so a job can never be lost with a replica that was never running."""
    from pipeline.tiny.cache import runner_settings
    from pipeline.video.loop import LocalStages
    from pipeline.video.runner import VideoRunner
    from service.settings import ModelSettings

    models = ModelSettings(profile="tiny", tiny_dir=str(tmp_path / "tiny"))
    runner = VideoRunner.from_cache(models.roots(), download=False, device="cpu", **runner_settings())
    settings = JobSettings(data_dir=str(tmp_path / "data"), poll_interval_s=0.1, lease_s=30.0)

    async def scenario() -> None:
        store = settings.open_store()
        job = store.create("video")
        worker = VideoWorker(LocalStages(runner.detector, runner.hmr2), settings, models, map_error=lambda exc: None,
                             claim_after_health_check=True)
        try:
            await worker.wake()
            await asyncio.sleep(1.0)  # ten polls
            assert (store.get(job.id).state, store.get(job.id).attempts) == ("queued", 0)
            await worker.check_health()  # the host counts it as running now
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and store.get(job.id).attempts == 0:
                await asyncio.sleep(0.05)
            assert store.get(job.id).attempts == 1
        finally:
            worker.stop()
            store.close()

    asyncio.run(scenario())


def test_a_callback_pending_when_its_worker_died_is_delivered_by_the_next_once(tmp_path):
    """A job ended and its event was claimed by a worker that died before sending it: a worker
    started afterwards delivers it, with the event's id, and only once."""
    import json

    from pipeline.tiny.cache import runner_settings
    from pipeline.video.loop import LocalStages
    from pipeline.video.runner import VideoRunner
    from service.settings import ModelSettings

    receiver = _Receiver()
    models = ModelSettings(profile="tiny", tiny_dir=str(tmp_path / "tiny"))
    runner = VideoRunner.from_cache(models.roots(), download=False, device="cpu", **runner_settings())
    settings = JobSettings(data_dir=str(tmp_path / "data"), poll_interval_s=0.2, lease_s=30.0,
                           callback_allow_http=True, callback_allow_hosts=("127.0.0.1",))

    async def scenario() -> None:
        store = settings.open_store()
        job = store.create("video", callback_url=receiver.url)
        store.cancel(job.id)  # a queued job cancelled: its job.cancelled event is due
        dead = store.claim_callbacks(hold_s=0.5)  # claimed by a worker that dies now
        assert [e.event for e in dead] == ["job.cancelled"]
        await asyncio.sleep(0.6)
        worker = VideoWorker(LocalStages(runner.detector, runner.hmr2), settings, models, map_error=lambda exc: None)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not receiver.received:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # five more delivery rounds: nothing is sent twice
        finally:
            worker.stop()
            store.close()
        assert len(receiver.received) == 1
        event_id, body = receiver.received[0]
        sent = json.loads(body)
        assert event_id == dead[0].id == sent["event_id"]
        assert (sent["event"], sent["job"]["id"], sent["job"]["state"]) == ("job.cancelled", job.id, "cancelled")

    try:
        asyncio.run(scenario())
    finally:
        receiver.close()
