"""The persistent job store and media-path confinement.

Every store test runs twice: on SQLite (the embedded default) and on a real PostgreSQL server
(the cluster store), ``$POSE_TEST_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``,
each test in a schema of its own. Without a server the PostgreSQL half skips with the reason,
except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import InputError, PoseError
from service.jobs import Job, JobStore
from service.jobs.layout import write_store_id
from service.paths import resolve_media_path


@pytest.fixture
def store(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=3600, max_active=1, max_queued=3) as s:
        yield s


def _upload(store: JobStore, data: bytes = b"video bytes", suffix: str = ".mp4") -> Path:
    path = store.new_upload_path(suffix)
    path.write_bytes(data)
    return path


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


# --- create, get, files ---------------------------------------------------------------------


def test_create_moves_the_upload_in_and_records_everything(store):
    upload = _upload(store)
    job = store.create(
        "video",
        input_file=upload,
        move_input=True,
        options={"vertices": False, "fps": 30},
        callback_url="https://example.org/hook",
    )
    assert isinstance(job, Job)
    assert len(job.id) == 32 and job.state == "queued" and job.attempts == 0
    assert job.input_path == store.job_dir(job.id) / "input.mp4"
    assert job.input_path.read_bytes() == b"video bytes" and not upload.exists()
    assert job.options == {"fps": 30, "vertices": False}
    assert job.callback_url == "https://example.org/hook"
    assert job.error is None and job.progress is None
    assert store.get(job.id) == job
    public = job.to_dict()
    json.dumps(public)
    assert "input_path" not in public and str(store.data_dir) not in json.dumps(public)


def test_referenced_input_is_not_moved(store, tmp_path):
    media = tmp_path / "clip.mp4"
    media.write_bytes(b"x")
    job = store.create(input_file=media)
    assert job.input_path == media and media.exists()
    store.delete(job.id)
    assert media.exists()  # the caller's file is theirs


def test_bad_create_arguments(store):
    with pytest.raises(InputError) as excinfo:
        store.create(options={"x": float("nan")})
    assert _code(excinfo) == "job_options_invalid"
    with pytest.raises(InputError) as excinfo:
        store.create(callback_url="file:///etc/passwd")
    assert _code(excinfo) == "callback_url_invalid"
    with pytest.raises(InputError) as excinfo:
        store.new_upload_path("/../x")
    assert _code(excinfo) == "suffix_invalid"


@pytest.mark.parametrize("bad", ["nope", "../" + "0" * 29, "A" * 32, ""])
def test_unknown_or_malformed_ids_are_not_found(store, bad):
    with pytest.raises(PoseError) as excinfo:
        store.get(bad)
    assert _code(excinfo) == "job_not_found" and excinfo.value.status == 404
    with pytest.raises(PoseError):
        store.delete(bad)


def test_results_are_written_atomically_and_survive(store, tmp_path):
    job = store.create(input_file=_upload(store), move_input=True)
    assert store.claim_next().id == job.id
    store.update_progress(job.id, 5, 10, {"decode": 0.5})
    job = store.update_progress(job.id, 10, timings={"detect": 2.0, "decode": 0.75})
    assert (job.frames_done, job.frames_total, job.progress) == (10, 10, 1.0)
    assert job.timings == {"decode": 0.75, "detect": 2.0}
    json_path = store.write_json_result(job.id, "result.json", {"frames": []})
    with store.open_result(job.id, "result.npz") as f:
        f.write(b"npz")
    with pytest.raises(RuntimeError):  # a failed write leaves neither a partial file nor a temp file
        with store.open_result(job.id, "broken.bin") as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    names = sorted(p.name for p in store.job_dir(job.id).iterdir())
    assert names == ["input.mp4", "result.json", "result.npz", "store-id"]
    done = store.finish(job.id, {"json": json_path, "npz": "result.npz"})
    assert done.state == "succeeded" and done.finished_at is not None
    assert done.result_paths == {"json": json_path, "npz": store.job_dir(job.id) / "result.npz"}
    with pytest.raises(ValueError):
        store.write_result(job.id, "../escape", b"")
    with pytest.raises(ValueError):
        store.finish(job.id, {"x": tmp_path / "elsewhere"})


# --- idempotency and limits ------------------------------------------------------------------


def test_idempotency_key_returns_the_existing_job(store):
    first = store.create(input_file=_upload(store), move_input=True, idempotency_key="upload-42")
    retry_upload = _upload(store, b"same video again")
    again = store.create(input_file=retry_upload, move_input=True, idempotency_key="upload-42")
    assert again.id == first.id
    assert not retry_upload.exists()  # the duplicate upload is dropped
    assert store.find_by_idempotency_key("upload-42").id == first.id
    assert store.list()[1] == 1


def test_idempotency_key_with_another_request_is_refused(store):
    first = store.create(input_file=_upload(store), move_input=True, idempotency_key="k1", fingerprint="a" * 64)
    again = store.create(input_file=_upload(store), move_input=True, idempotency_key="k1", fingerprint="a" * 64)
    assert again.id == first.id
    other = _upload(store, b"another video")
    with pytest.raises(InputError) as excinfo:
        store.create(input_file=other, move_input=True, idempotency_key="k1", fingerprint="b" * 64)
    assert (excinfo.value.code, excinfo.value.status) == ("idempotency_key_reused", 422)
    assert excinfo.value.details["job_id"] == first.id
    assert not other.exists()  # the refused upload is dropped
    assert store.list()[1] == 1


def test_a_client_at_its_limit_is_refused_while_others_and_unbounded_callers_are_not(store):
    for _ in range(2):
        store.create(input_file=_upload(store), move_input=True, client="alice", client_limit=2)
    upload = _upload(store)
    with pytest.raises(PoseError) as excinfo:
        store.create(input_file=upload, move_input=True, client="alice", client_limit=2)
    err = excinfo.value
    assert (err.code, err.status) == ("client_job_limit", 429)
    assert {k: err.details[k] for k in ("client", "client_jobs", "max_jobs_per_client")} == {
        "client": "alice", "client_jobs": 2, "max_jobs_per_client": 2,
    }
    assert err.details["retry_after"] >= 1 and upload.exists()  # refused before the upload moved
    assert store.create(client="bob", client_limit=2).client == "bob"  # another client still submits
    assert store.create(client="alice").client == "alice"  # without a limit of its own (an admin): the queue bounds it
    with pytest.raises(PoseError) as excinfo:
        store.check_admission("alice", 3)  # the route's check before reading an upload
    assert excinfo.value.details["client_jobs"] == 3
    finished = store.claim_next(30.0)
    assert finished is not None and finished.client == "alice"
    store.finish(finished.id, {}, finished.attempts)
    store.check_admission("alice", 3)  # a finished job no longer counts


def test_full_queue_refuses_with_429_and_retry_after(store):
    ids = [store.create(input_file=_upload(store), move_input=True).id for _ in range(4)]  # 1 active + 3 queued
    upload = _upload(store)
    with pytest.raises(PoseError) as excinfo:
        store.create(input_file=upload, move_input=True)
    err = excinfo.value
    assert err.code == "too_many_jobs" and err.status == 429
    assert err.details["retry_after"] >= 1 and err.details["queued"] == 4
    assert err.to_dict()["error"]["details"]["retry_after"] == err.details["retry_after"]
    assert upload.exists()  # refused before anything moved: the caller decides what to do with it
    assert len(list(store.jobs_dir.iterdir())) == 4
    # a retried request with a known key still gets its job, even when full
    store.cancel(ids[-1])
    assert store.create(idempotency_key="k").state == "queued"
    assert store.create(idempotency_key="k").state == "queued"


def test_claim_respects_max_active_and_order(store):
    a = store.create()
    time.sleep(0.002)
    b = store.create()
    assert store.claim_next().id == a.id
    assert store.claim_next() is None  # max_active = 1
    store.finish(a.id, {})
    claimed = store.claim_next()
    assert claimed.id == b.id and claimed.state == "running" and claimed.attempts == 1
    assert claimed.started_at is not None


def test_claims_are_atomic_across_threads(open_store, tmp_path):
    with open_store(tmp_path / "d", retention_s=None, max_active=50, max_queued=50) as store:
        ids = {store.create().id for _ in range(40)}
        got: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            while (job := store.claim_next()) is not None:
                with lock:
                    got.append(job.id)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == sorted(ids)  # each job exactly once


def test_two_store_objects_on_one_folder_claim_each_job_once(open_store, tmp_path):
    with open_store(tmp_path / "d", retention_s=None, max_active=10, max_queued=10) as one, open_store(
        tmp_path / "d", retention_s=None, max_active=10, max_queued=10
    ) as two:
        ids = {one.create().id for _ in range(6)}
        got = []
        for s in [one, two] * 4:
            job = s.claim_next()
            if job is not None:
                got.append(job.id)
        assert sorted(got) == sorted(ids)


def test_usable_from_asyncio_tasks(store):
    async def main() -> list[str]:
        async def make(i: int) -> str:
            await asyncio.sleep(0)
            return store.create(idempotency_key=f"k{i % 2}").id

        return await asyncio.gather(*(make(i) for i in range(6)))

    ids = asyncio.run(main())
    assert len(set(ids)) == 2


# --- cancel, fail, delete ---------------------------------------------------------------------


def test_cancel_queued_and_running(store):
    queued = store.create()
    running = store.create()
    assert store.claim_next().id == queued.id  # claim the first, then cancel the second
    gone = store.cancel(running.id)
    assert gone.state == "cancelled" and gone.error.code == "cancelled"
    assert store.cancel(running.id).state == "cancelled"  # idempotent
    flagged = store.cancel(queued.id)
    assert flagged.state == "running" and flagged.cancel_requested
    assert store.is_cancelled(queued.id)
    assert store.mark_cancelled(queued.id).state == "cancelled"
    with pytest.raises(PoseError) as excinfo:
        store.update_progress(queued.id, 1)
    assert _code(excinfo) == "job_state_conflict" and excinfo.value.status == 409


def test_delete_goes_through_the_store_to_whichever_worker_runs_the_job(store):
    queued, running = store.create(input_file=_upload(store), move_input=True), store.create()
    waiting = store.create(input_file=_upload(store), move_input=True)
    assert store.claim_next(30.0).id == queued.id
    assert store.claim_next(30.0, limit_running=False).id == running.id  # a second worker
    assert store.request_delete(waiting.id) is None  # not running: gone at once, with its folder
    assert not store.job_dir(waiting.id).exists()
    with pytest.raises(PoseError) as excinfo:
        store.get(waiting.id)
    assert _code(excinfo) == "job_not_found"
    asked = store.request_delete(queued.id)  # running: the request is recorded in its row
    assert asked is not None and asked.to_dict()["state"] == "deleting" and asked.state == "running"
    assert store.job_dir(queued.id).is_dir()
    assert store.cancel(queued.id).to_dict()["state"] == "deleting"  # a later cancel keeps the delete
    assert store.cancel(running.id).to_dict()["state"] == "cancelling"
    assert not store.delete_if_requested(queued.id)  # still running: nothing yet
    # the owner, whichever worker it is, sees the request at its next chunk and stops
    assert store.is_cancelled(queued.id)
    stopped = store.mark_cancelled(queued.id)
    assert (stopped.state, stopped.to_dict()["state"]) == ("cancelled", "deleting")  # until it is gone
    assert store.delete_if_requested(queued.id) and not store.job_dir(queued.id).exists()
    with pytest.raises(PoseError) as excinfo:
        store.get(queued.id)
    assert _code(excinfo) == "job_not_found"
    assert not store.delete_if_requested(running.id)  # a cancel alone is not a delete


def test_a_delete_asked_of_a_job_whose_worker_died_is_carried_out_by_the_next(open_store, tmp_path):
    store = open_store(tmp_path / "data", max_active=1, max_queued=2)
    job = store.create()
    claimed = store.claim_next(0.5)
    assert claimed is not None
    store.request_delete(job.id)
    time.sleep(1.0)  # the lease runs out: its worker is gone
    report = store.expire_leases(max_attempts=3)
    assert report.cancelled == [job.id]
    assert store.delete_if_requested(job.id) and not store.job_dir(job.id).exists()


def test_finish_after_a_cancel_request_ends_cancelled(store):
    job = store.create()
    store.claim_next()
    store.cancel(job.id)
    assert store.finish(job.id, {}).state == "cancelled"


def test_fail_records_code_and_message(store):
    job = store.create()
    store.claim_next()
    failed = store.fail(job.id, "video_corrupt", "the video stream is damaged after 3 frames")
    assert failed.state == "failed"
    assert failed.error.code == "video_corrupt" and "damaged" in failed.error.message
    with pytest.raises(PoseError) as excinfo:
        store.cancel(job.id)
    assert _code(excinfo) == "job_state_conflict"


def test_delete_removes_files_but_not_a_running_job(store):
    job = store.create(input_file=_upload(store), move_input=True)
    store.claim_next()
    with pytest.raises(PoseError) as excinfo:
        store.delete(job.id)
    assert _code(excinfo) == "job_state_conflict"
    store.fail(job.id, "x", "y")
    store.delete(job.id)
    assert not store.job_dir(job.id).exists()
    with pytest.raises(PoseError) as excinfo:
        store.get(job.id)
    assert _code(excinfo) == "job_not_found"
    assert store.is_cancelled(job.id)  # a worker whose job is gone stops


# --- clients ----------------------------------------------------------------------------------


def test_a_job_belongs_to_its_client_and_is_not_found_by_another(store):
    mine = store.create(input_file=_upload(store), move_input=True, client="alice")
    theirs = store.create(client="bob")
    assert (mine.client, theirs.client) == ("alice", "bob")
    assert mine.to_dict()["client"] == "alice"
    assert store.get(mine.id, "alice").id == mine.id
    assert store.get(mine.id).id == mine.id  # no scope: every client (admins, the workers)
    missing = "0" * 32
    for call in (store.get, store.cancel, store.delete):
        with pytest.raises(PoseError) as other:
            call(mine.id, "bob")
        with pytest.raises(PoseError) as absent:
            call(missing, "bob")
        # exactly as a job that does not exist: the caller learns nothing of the other client's job
        assert (other.value.code, other.value.status) == (absent.value.code, absent.value.status) == ("job_not_found", 404)
        assert other.value.message == absent.value.message.replace(missing, mine.id)
    assert store.get(mine.id, "alice").state == "queued"  # bob's cancel and delete did nothing
    assert store.job_dir(mine.id).is_dir()
    assert store.cancel(mine.id, "alice").state == "cancelled"
    store.delete(mine.id, "alice")
    with pytest.raises(PoseError):
        store.get(mine.id)
    assert store.get(theirs.id, "bob").state == "queued"


def test_listing_is_per_client_and_unscoped_for_admins(open_store, tmp_path):
    with open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=20) as store:
        made: dict[str, list[str]] = {"alice": [], "bob": []}
        for client in ("alice", "bob", "alice", "bob", "alice"):
            made[client].append(store.create(client=client).id)
            time.sleep(0.002)
        store.claim_next()  # alice's first job runs
        page, total = store.list(limit=1000, client="alice")
        assert total == 3 and [j.id for j in page] == made["alice"][::-1]
        page, total = store.list(limit=1000, client="bob")
        assert total == 2 and [j.id for j in page] == made["bob"][::-1]
        page, total = store.list(limit=1, offset=1, client="bob")
        assert total == 2 and [j.id for j in page] == [made["bob"][0]]
        assert store.list(state="running", client="bob") == ([], 0)
        running, total = store.list(state="running", client="alice")
        assert total == 1 and running[0].id == made["alice"][0]
        everything, total = store.list(limit=1000)
        assert total == 5 and {j.id for j in everything} == set(made["alice"] + made["bob"])
        assert store.list(client="carol") == ([], 0)


def test_idempotency_keys_are_scoped_to_the_client(store):
    alice = store.create(input_file=_upload(store), move_input=True, idempotency_key="k", fingerprint="a" * 64, client="alice")
    # the same key from another client is another request, whatever it carries
    bob = store.create(input_file=_upload(store), move_input=True, idempotency_key="k", fingerprint="b" * 64, client="bob")
    assert bob.id != alice.id and bob.client == "bob"
    retry = _upload(store)
    again = store.create(input_file=retry, move_input=True, idempotency_key="k", fingerprint="a" * 64, client="alice")
    assert again.id == alice.id and not retry.exists()
    with pytest.raises(InputError) as reused:  # within one client the key still binds its request
        store.create(input_file=_upload(store), move_input=True, idempotency_key="k", fingerprint="b" * 64, client="alice")
    assert _code(reused) == "idempotency_key_reused" and reused.value.details["job_id"] == alice.id
    assert store.find_by_idempotency_key("k", "alice").id == alice.id
    assert store.find_by_idempotency_key("k", "bob").id == bob.id
    assert store.find_by_idempotency_key("k") is None  # the default client never used it
    assert store.list()[1] == 2


def test_concurrent_retries_of_two_clients_make_one_job_each(open_store, tmp_path):
    # two store objects: two connections racing, as two Ingress replicas would
    stores = [open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=50) for _ in range(2)]

    async def main() -> list[tuple[str, str]]:
        async def one(i: int) -> tuple[str, str]:
            client = ("alice", "bob")[i % 2]
            job = await asyncio.to_thread(stores[(i // 2) % 2].create, idempotency_key="same", client=client)
            return client, job.id

        return await asyncio.gather(*(one(i) for i in range(12)))

    made = asyncio.run(main())
    assert len(made) == 12
    ids = {client: {j for c, j in made if c == client} for client in ("alice", "bob")}
    assert len(ids["alice"]) == len(ids["bob"]) == 1 and ids["alice"] != ids["bob"]
    assert stores[0].list()[1] == 2


# --- listing ----------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_state(open_store, tmp_path):
    with open_store(tmp_path / "d", retention_s=None, max_active=2, max_queued=20) as store:
        ids = []
        for _ in range(7):
            ids.append(store.create().id)
            time.sleep(0.002)
        store.claim_next()
        page, total = store.list(offset=0, limit=3)
        assert total == 7 and [j.id for j in page] == ids[::-1][:3]
        page, total = store.list(offset=6, limit=3)
        assert [j.id for j in page] == [ids[0]]
        running, total = store.list(state="running")
        assert total == 1 and running[0].id == ids[0]
        assert store.list(offset=100)[0] == []
        for bad in [{"limit": 0}, {"offset": -1}, {"offset": 10**20}, {"state": "done"}]:
            with pytest.raises(InputError):
                store.list(**bad)


# --- restart --------------------------------------------------------------------------------


def test_restart_requeues_then_fails_interrupted_jobs(open_store, tmp_path):
    data = tmp_path / "d"
    store = open_store(data, retention_s=None, max_active=1, max_queued=5)
    job = store.create(input_file=_upload(store), move_input=True, idempotency_key="once")
    assert store.claim_next().attempts == 1
    waiting = store.create()
    store.close()  # the process dies with the job running
    del store

    for attempt in (2, 3):
        store = open_store(data, retention_s=None, max_active=1, max_queued=5)
        report = store.recover_after_restart(max_attempts=3)
        assert report.requeued == [job.id] and not report.failed
        assert store.get(job.id).state == "queued" and store.get(waiting.id).state == "queued"
        assert store.get(job.id).input_path.read_bytes() == b"video bytes"
        claimed = store.claim_next()
        assert claimed.id == job.id and claimed.attempts == attempt
        store.close()

    store = open_store(data, retention_s=None, max_active=1, max_queued=5)
    report = store.recover_after_restart(max_attempts=3)
    assert report.failed == [job.id]
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.error.code == "interrupted"
    assert "3 times" in failed.error.message
    assert store.get(waiting.id).state == "queued"  # nothing vanished
    assert store.find_by_idempotency_key("once").id == job.id
    store.close()


def test_recovery_leaves_its_own_running_jobs_alone(store):
    job = store.create()
    store.claim_next()
    assert store.recover_after_restart().requeued == []
    assert store.get(job.id).state == "running"


def test_recovery_honours_a_cancel_asked_before_the_crash(open_store, tmp_path):
    store = open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=5)
    job = store.create()
    store.claim_next()
    store.cancel(job.id)
    store.close()
    with open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=5) as again:
        assert again.recover_after_restart().cancelled == [job.id]
        assert again.get(job.id).state == "cancelled"


def test_recovery_removes_orphans_after_a_grace_period(store):
    orphan = store.jobs_dir / ("f" * 32)  # this store's folder, its row never committed (a crash)
    orphan.mkdir()
    write_store_id(orphan, store.store_id)
    unmarked = store.jobs_dir / ("e" * 32)  # no store id: not provably this store's
    unmarked.mkdir()
    stale_upload = _upload(store)
    kept = store.create(input_file=_upload(store), move_input=True)
    assert store.recover_after_restart().removed_dirs == []  # young: maybe being created right now
    later = time.time() + 7200
    assert sorted(p.name for p in store.scan_orphans(now=later).remove) == sorted([orphan.name, stale_upload.name])
    assert orphan.is_dir()  # the scan removes nothing
    removed = store.recover_after_restart(now=later).removed_dirs
    assert sorted(removed) == sorted([orphan.name, stale_upload.name])
    assert store.job_dir(kept.id).is_dir() and unmarked.is_dir()


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request, tmp_path):
    """(open this test's store, open another store): two job databases on one backend, both
    meant to be opened on the same data folder."""
    if request.param == "sqlite":
        urls = [None, f"sqlite:///{tmp_path / 'other.sqlite3'}"]
        yield tuple((lambda data, u=u, **kw: JobStore(data, url=u, **kw)) for u in urls)
        return
    from pg_helpers import isolated_schema

    server = request.getfixturevalue("postgres_server")
    with isolated_schema(server) as (first, _), isolated_schema(server) as (second, _):
        yield tuple((lambda data, u=u, **kw: JobStore(data, url=u, **kw)) for u in (first, second))


def test_an_empty_or_other_store_on_the_same_storage_removes_no_folder(two_stores, tmp_path):
    open_mine, open_other = two_stores
    data, later = tmp_path / "data", time.time() + 7200
    with open_mine(data, retention_s=None, max_queued=10) as mine:
        jobs = [mine.create(input_file=_upload(mine), move_input=True) for _ in range(2)]
        assert (mine.job_dir(jobs[0].id) / "store-id").read_text().strip() == mine.store_id
    with open_other(data, retention_s=None, max_queued=10) as other:  # a wrong URL: a fresh, empty store
        scan = other.scan_orphans(now=later)
        assert scan.remove == [] and "holds no jobs" in scan.skipped
        assert other.recover_after_restart(now=later).removed_dirs == []
        own = other.create()  # no longer empty: still, the first store's folders are not its own
        scan = other.scan_orphans(now=later)
        assert scan.remove == [] and sorted(scan.foreign) == sorted(j.id for j in jobs)
        assert other.recover_after_restart(now=later).removed_dirs == []
        assert other.store_id != mine.store_id
    assert all((data / "jobs" / j.id / "input.mp4").is_file() for j in jobs)
    with open_mine(data, retention_s=None, max_queued=10) as mine:
        assert mine.scan_orphans(now=later).foreign == [own.id]
        # a job of this store whose row is gone while its folder stayed (a crash between the two)
        with mine._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = :id", {"id": jobs[0].id})
        assert mine.recover_after_restart(now=later).removed_dirs == [jobs[0].id]
        assert not mine.job_dir(jobs[0].id).exists() and mine.job_dir(jobs[1].id).is_dir()
        assert (data / "jobs" / own.id).is_dir()


def test_folders_of_older_releases_are_marked_for_their_store(store):
    job = store.create()
    (store.job_dir(job.id) / "store-id").unlink()  # made before store ids existed
    store.recover_after_restart()
    assert (store.job_dir(job.id) / "store-id").read_text().strip() == store.store_id
    with store._tx() as db:
        db.execute("DELETE FROM jobs WHERE id = :id", {"id": job.id})
    store.create()
    assert store.recover_after_restart(now=time.time() + 7200).removed_dirs == [job.id]


def test_cleanup_dry_run_reports_and_removes_nothing(tmp_path, capsys):
    from service.cli import main

    data = tmp_path / "data"
    with JobStore(data, retention_s=None) as store:
        gone = store.create()
        store.create()
        with store._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = :id", {"id": gone.id})
        foreign = store.jobs_dir / ("d" * 32)
        foreign.mkdir()
        write_store_id(foreign, "0" * 32)
        for path in (store.job_dir(gone.id), foreign):
            os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert main(["cleanup", "--dry-run", "--data-dir", str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["remove"] == [gone.id] and report["removed"] == []
    assert report["kept"]["other_store"] == [foreign.name] and report["skipped"] is None
    assert (data / "jobs" / gone.id).is_dir()
    assert main(["cleanup", "--data-dir", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [gone.id]
    assert not (data / "jobs" / gone.id).exists() and foreign.is_dir()


def test_embedded_database_is_sqlite_in_wal_mode_and_node_local(tmp_path):
    with JobStore(tmp_path / "data") as store:
        assert store.node_local and store.url.startswith("sqlite:///")
        db = sqlite3.connect(store.data_dir / "jobs.sqlite3")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


def test_postgresql_store_is_shared_and_hides_the_password(postgres_url, tmp_path):
    from service.jobs import redact

    with JobStore(tmp_path / "data", url=postgres_url) as store:
        assert not store.node_local and not (tmp_path / "data" / "jobs.sqlite3").exists()
    assert redact("postgresql://pose:s3cret@db:5432/jobs") == "postgresql://pose:***@db:5432/jobs"


def test_unreachable_or_unknown_job_store_is_a_clear_error(tmp_path):
    with pytest.raises(PoseError) as err:
        JobStore(tmp_path / "data", url="postgresql://nobody:pw@127.0.0.1:9/none?connect_timeout=1")
    assert err.value.code == "job_store_unavailable" and "pw" not in err.value.message
    with pytest.raises(PoseError) as err:
        JobStore(tmp_path / "data", url="mysql://db/jobs")
    assert err.value.code == "job_store_invalid"


# --- retention ---------------------------------------------------------------------------------


def test_purge_expired_deletes_only_old_finished_jobs(store):
    done = store.create(input_file=_upload(store), move_input=True)
    store.claim_next()
    store.finish(done.id, {})
    queued = store.create()
    now = time.time()
    assert store.purge_expired(now) == []
    assert store.purge_expired(now + 3601) == [done.id]
    assert not store.job_dir(done.id).exists()
    assert store.get(queued.id).state == "queued"


def test_no_retention_keeps_everything(open_store, tmp_path):
    with open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=1) as store:
        job = store.create()
        store.claim_next()
        store.finish(job.id, {})
        assert store.purge_expired(time.time() + 1e9) == []


# --- media path confinement -----------------------------------------------------------------


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"s")
    return root


def test_paths_inside_the_media_folder(media):
    expected = (media / "sub" / "clip.mp4").resolve()
    assert resolve_media_path("sub/clip.mp4", media) == expected
    assert resolve_media_path(str(media / "sub" / "clip.mp4"), media) == expected
    assert resolve_media_path("sub/../sub/./clip.mp4", media) == expected
    os.symlink(media / "sub" / "clip.mp4", media / "link.mp4")
    assert resolve_media_path("link.mp4", media) == expected


@pytest.mark.parametrize("user_path", ["../secret.mp4", "sub/../../secret.mp4", "ABS", "/etc/passwd", "../nope.mp4"])
def test_paths_outside_are_refused(media, user_path):
    if user_path == "ABS":
        user_path = str(media.parent / "secret.mp4")
    with pytest.raises(InputError) as excinfo:
        resolve_media_path(user_path, media)
    assert _code(excinfo) == "path_outside_media_root" and excinfo.value.status == 403
    assert repr(user_path) in excinfo.value.message  # what the caller sent, nothing resolved


def test_symlink_out_of_the_media_folder_is_refused(media):
    os.symlink(media.parent / "secret.mp4", media / "escape.mp4")
    os.symlink(media.parent, media / "sub" / "up")
    for user_path in ["escape.mp4", "sub/up/secret.mp4"]:
        with pytest.raises(InputError) as excinfo:
            resolve_media_path(user_path, media)
        assert _code(excinfo) == "path_outside_media_root"


def test_missing_and_non_regular_paths(media):
    with pytest.raises(InputError) as excinfo:
        resolve_media_path("sub/missing.mp4", media)
    assert _code(excinfo) == "path_not_found" and excinfo.value.status == 404
    with pytest.raises(InputError) as excinfo:
        resolve_media_path("sub", media)
    assert _code(excinfo) == "path_not_a_file"
    os.mkfifo(media / "pipe.mp4")
    with pytest.raises(InputError) as excinfo:
        resolve_media_path("pipe.mp4", media)
    assert _code(excinfo) == "path_not_a_file"
    for bad in ["", "  ", "a\x00b"]:
        with pytest.raises(InputError) as excinfo:
            resolve_media_path(bad, media)
        assert _code(excinfo) == "path_invalid"


# --- checkpoints, leases and fencing --------------------------------------------------------------


def test_a_checkpoint_is_committed_with_its_progress_and_survives_a_requeue(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as first:
        job = first.create()
        claimed = first.claim_next(lease_s=30)
        assert claimed.attempts == 1 and claimed.checkpoint is None and claimed.lease_until > time.time()
        first.save_checkpoint(job.id, 1, {"file": "checkpoint-a1-000002.npz", "next_frame": 16}, 16, 40, {"models_s": 1.5})
        got = first.get(job.id)
        assert got.checkpoint == {"file": "checkpoint-a1-000002.npz", "next_frame": 16}
        assert (got.frames_done, got.frames_total, got.timings["models_s"]) == (16, 40, 1.5)
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as second:  # the process restarted
        assert second.recover_after_restart(max_attempts=3).requeued == [job.id]
        again = second.claim_next()
        assert again.attempts == 2 and again.frames_done == 16
        assert again.checkpoint == {"file": "checkpoint-a1-000002.npz", "next_frame": 16}


def test_an_expired_lease_is_taken_over_and_the_old_attempt_cannot_publish(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        old = store.claim_next(lease_s=0.05)
        assert store.claim_next(lease_s=30) is None  # the lease is live: the slot is taken
        assert store.expire_leases(max_attempts=3).requeued == []
        time.sleep(0.1)
        assert store.expire_leases(max_attempts=3).requeued == [job.id]  # stopped renewing: back in the queue
        new = store.claim_next(lease_s=30)
        assert (new.id, old.attempts, new.attempts) == (job.id, 1, 2)
        stale = [
            lambda: store.save_checkpoint(job.id, old.attempts, {"file": "x", "next_frame": 8}, 8),
            lambda: store.heartbeat(job.id, old.attempts),
            lambda: store.update_progress(job.id, 8, token=old.attempts),
            lambda: store.finish(job.id, {}, token=old.attempts),
            lambda: store.fail(job.id, "internal_error", "late", token=old.attempts),
            lambda: store.mark_cancelled(job.id, token=old.attempts),
        ]
        for call in stale:
            with pytest.raises(PoseError) as err:
                call()
            assert _code(err) == "attempt_superseded" and err.value.status == 409
        current = store.get(job.id)
        assert current.state == "running" and current.attempts == 2 and current.checkpoint is None
        store.heartbeat(job.id, 2, lease_s=30)
        assert store.finish(job.id, {}, token=2).state == "succeeded"


def test_a_live_lease_is_never_taken_over(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=2) as store:
        job = store.create()
        store.claim_next(lease_s=30)
        assert store.claim_next(lease_s=30) is None
        assert store.expire_leases(max_attempts=3).requeued == []
        assert store.recover_after_restart(requeue_running=False).requeued == []  # another worker's live job
        assert store.get(job.id).attempts == 1 and store.get(job.id).state == "running"


def test_an_expired_lease_of_a_job_started_too_often_fails_interrupted(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        for _ in range(2):
            store.claim_next(lease_s=0.01)
            time.sleep(0.05)
            report = store.expire_leases(max_attempts=2)
        assert report.failed == [job.id]
        ended = store.get(job.id)
        assert ended.state == "failed" and ended.error.code == "interrupted"


def test_workers_claim_different_jobs_at_once(open_store, tmp_path):
    """Several worker processes' stores on one database (threads here): each queued job is
    claimed exactly once, with no global limit on running jobs."""
    with open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=100) as first:
        ids = {first.create().id for _ in range(30)}
        stores = [first] + [open_store(tmp_path / "d", retention_s=None, max_active=1, max_queued=100) for _ in range(3)]
        claimed: list[str] = []
        lock = threading.Lock()

        def work(store):
            while (job := store.claim_next(lease_s=30, limit_running=False)) is not None:
                with lock:
                    claimed.append(job.id)

        threads = [threading.Thread(target=work, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == sorted(ids)


def test_a_database_of_the_first_schema_gains_the_new_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "jobs.sqlite3")
    db.executescript(_FIRST_SCHEMA)
    db.execute("PRAGMA user_version=1")
    db.execute(
        "INSERT INTO jobs (id, kind, state, created_at, updated_at) VALUES (?, 'video', 'queued', 1.0, 1.0)", ("a" * 32,)
    )
    db.commit()
    db.close()
    with JobStore(data, retention_s=None) as store:
        job = store.claim_next()
        assert job.id == "a" * 32 and job.checkpoint is None and job.lease_until is not None


# The jobs table as schema 2 created it: no client, one idempotency key across all callers.
_SCHEMA_2 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, seq BIGINT, kind TEXT NOT NULL, state TEXT NOT NULL, created_at {real} NOT NULL,
    updated_at {real} NOT NULL, started_at {real}, finished_at {real}, frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER, timings TEXT NOT NULL DEFAULT '{{}}', error_code TEXT, error_message TEXT,
    input_path TEXT, options TEXT NOT NULL DEFAULT '{{}}', idempotency_key TEXT UNIQUE, callback_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT,
    results TEXT NOT NULL DEFAULT '{{}}', checkpoint TEXT, lease_until {real}
)
"""
_OLD_ROW = (
    "INSERT INTO jobs (id, seq, kind, state, created_at, updated_at, idempotency_key) "
    "VALUES ('{id}', 1, 'video', 'queued', 1.0, 1.0, 'k')"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def schema_2_database(request, tmp_path):
    """(job store URL or None, data folder, a function running SQL on the raw database): a
    database as schema 2 left it, holding one queued job with idempotency key 'k'."""
    data = tmp_path / "data"
    data.mkdir()
    if request.param == "sqlite":
        path = data / "jobs.sqlite3"

        def run(sql: str) -> list[tuple]:
            with contextlib.closing(sqlite3.connect(path)) as db:
                rows = db.execute(sql).fetchall()
                db.commit()
            return rows

        run(_SCHEMA_2.format(real="REAL"))
        run("PRAGMA user_version=2")
        url = None
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")

        def run(sql: str) -> list[tuple]:
            with psycopg.connect(url, autocommit=True) as conn:
                cur = conn.execute(sql)
                return cur.fetchall() if cur.description else []

        run(_SCHEMA_2.format(real="DOUBLE PRECISION"))
        run("CREATE TABLE pose_schema (version INTEGER NOT NULL)")
        run("INSERT INTO pose_schema (version) VALUES (2)")
    run(_OLD_ROW.format(id="a" * 32))
    return url, data, run, request.param


def test_a_schema_2_database_gains_clients_and_per_client_keys(schema_2_database):
    url, data, run, backend = schema_2_database
    with JobStore(data, url=url, retention_s=None, max_queued=10) as store:
        old = store.get("a" * 32)
        assert old.client == "default" and old.idempotency_key == "k"  # made before clients: the default one's
        assert store.find_by_idempotency_key("k").id == old.id
        assert store.create(idempotency_key="k").id == old.id  # still a replay for its client
        other = store.create(idempotency_key="k", client="alice")  # refused by schema 2's UNIQUE
        assert other.id != old.id
        assert store.list(client="default")[1] == 1 and store.list()[1] == 2
    if backend == "sqlite":
        assert run("PRAGMA user_version") == [(3,)]
    else:
        assert run("SELECT version FROM pose_schema") == [(3,)]
    with JobStore(data, url=url, retention_s=None) as again:  # opening a migrated database changes nothing
        assert again.get(other.id, "alice").idempotency_key == "k" and again.list()[1] == 2


# The jobs table as the first release created it (no checkpoint, lease or sequence columns).
_FIRST_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, started_at REAL, finished_at REAL, frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER, timings TEXT NOT NULL DEFAULT '{}', error_code TEXT, error_message TEXT,
    input_path TEXT, options TEXT NOT NULL DEFAULT '{}', idempotency_key TEXT UNIQUE, callback_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT,
    results TEXT NOT NULL DEFAULT '{}'
);
"""


def test_a_released_job_is_resumed_by_the_next_claim_and_the_old_token_is_stale(store):
    job = store.create()
    first = store.claim_next(lease_s=30)
    store.save_checkpoint(job.id, first.attempts, {"file": "c.npz", "next_frame": 8}, 8)
    store.release(job.id, first.attempts)
    assert store.counts() == {"queued": 1}
    second = store.claim_next(lease_s=30)
    assert second.attempts == first.attempts + 1 and second.checkpoint["next_frame"] == 8
    with pytest.raises(PoseError) as err:
        store.release(job.id, first.attempts)
    assert _code(err) == "attempt_superseded"


# --- attempts, crashes, the database's clock, stalls ---------------------------------------------


def test_graceful_hand_offs_are_attempts_but_not_crashes(open_store, tmp_path):
    """Three graceful releases (scale-down, redeploy, SIGTERM) then one lease expiry: with
    max_attempts 3 the job goes back to the queue, not to ``interrupted``."""
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        for attempt in (1, 2, 3):
            claimed = store.claim_next(lease_s=30)
            assert claimed.attempts == attempt and claimed.crashes == 0
            store.release(job.id, claimed.attempts)
        store.claim_next(lease_s=0.05)
        time.sleep(0.1)
        report = store.expire_leases(max_attempts=3)
        assert report.requeued == [job.id] and report.failed == []
        again = store.get(job.id)
        assert (again.state, again.attempts, again.crashes) == ("queued", 4, 1)
        assert again.to_dict()["attempts"] == 4 and again.to_dict()["crashes"] == 1
        assert store.claim_next(lease_s=30).attempts == 5  # the fencing token still grows on every claim


def test_max_attempts_counts_crashes(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        store.release(job.id, store.claim_next(lease_s=30).attempts)
        for crashes in (1, 2, 3):
            store.claim_next(lease_s=0.05)
            time.sleep(0.1)
            report = store.expire_leases(max_attempts=3)
            assert store.get(job.id).crashes == crashes
        assert report.failed == [job.id]
        ended = store.get(job.id)
        assert (ended.state, ended.error.code, ended.attempts) == ("failed", "interrupted", 4)
        assert "3 times" in ended.error.message


def test_leases_are_judged_on_the_database_clock_not_the_nodes(open_store, tmp_path, monkeypatch):
    """A lease granted by a node whose clock is an hour behind, judged by a node an hour ahead:
    still live, because both ask the database for the time."""
    import service.jobs.store as store_module

    real = time.time
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        monkeypatch.setattr(store_module.time, "time", lambda: real() - 3600)
        claimed = store.claim_next(lease_s=30)
        store.heartbeat(job.id, claimed.attempts, lease_s=30)
        monkeypatch.setattr(store_module.time, "time", lambda: real() + 3600)
        assert store.expire_leases(max_attempts=3) == store_module.RecoveryReport([], [], [], [], [])
        assert store.claim_next(lease_s=30) is None  # the slot is still taken by the live lease
        monkeypatch.setattr(store_module.time, "time", real)
        lease_until = store.get(job.id).lease_until
        assert real() - 60 < lease_until < real() + 60  # the database's clock is this machine's
        running = store.get(job.id)
        assert (running.state, running.attempts, running.crashes) == ("running", 1, 0)


def test_a_job_without_progress_is_taken_back_and_counted(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=2) as store:
        stuck, moving = store.create(), store.create()
        first = store.claim_next(lease_s=30)
        second = store.claim_next(lease_s=30)
        assert (first.id, second.id) == (stuck.id, moving.id)
        store.save_checkpoint(stuck.id, 1, {"file": "c.npz", "next_frame": 8}, 8, 40)
        time.sleep(0.2)
        store.heartbeat(stuck.id, 1, lease_s=30)  # its heartbeat goes on; its frames do not
        store.save_checkpoint(moving.id, 1, {"file": "c.npz", "next_frame": 8}, 8, 40)
        report = store.expire_leases(max_attempts=3, stall_s=0.1)
        assert report.stalled == [stuck.id] and report.requeued == [stuck.id] and report.failed == []
        taken = store.get(stuck.id)
        assert (taken.state, taken.crashes, taken.frames_done) == ("queued", 1, 8)
        assert taken.checkpoint["next_frame"] == 8  # the next attempt resumes there
        with pytest.raises(PoseError) as err:  # the stuck attempt can publish nothing
            store.save_checkpoint(stuck.id, 1, {"file": "d.npz", "next_frame": 16}, 16)
        assert _code(err) == "job_state_conflict"
        assert store.get(moving.id).state == "running"
        assert store.expire_leases(max_attempts=3).stalled == []  # no stall check without stall_s


def test_a_job_that_keeps_stalling_fails_interrupted(open_store, tmp_path):
    with open_store(tmp_path / "data", retention_s=None, max_active=1) as store:
        job = store.create()
        for _ in range(2):
            store.claim_next(lease_s=30)
            time.sleep(0.2)
            report = store.expire_leases(max_attempts=2, stall_s=0.1)
        assert report.stalled == [job.id] and report.failed == [job.id]
        ended = store.get(job.id)
        assert (ended.state, ended.error.code, ended.crashes) == ("failed", "interrupted", 2)
        assert "made no progress" in ended.error.message


# --- callbacks: the outbox ---------------------------------------------------------------------


def test_a_jobs_end_writes_its_callback_event_in_the_same_transaction(store):
    from service.jobs.outbox import MAX_DELIVERIES

    url = "https://hooks.example.com/pose"
    queued = store.create(callback_url=url, client="alice")
    silent = store.create()  # no callback URL: no event
    store.cancel(queued.id)  # a queued job's cancel is told too
    store.cancel(silent.id)
    events = store.claim_callbacks(hold_s=60.0)
    assert [(e.job_id, e.event, e.url, e.client) for e in events] == [(queued.id, "job.cancelled", url, "alice")]
    body = json.loads(events[0].body)
    assert body["event"] == "job.cancelled" and body["event_id"] == events[0].id
    assert body["job"]["id"] == queued.id and body["job"]["state"] == "cancelled"
    assert "callback_url" not in body["job"] and "idempotency_key" not in body["job"]
    assert store.claim_callbacks(hold_s=60.0) == []  # held by its claimer
    assert store.callback_failed(events[0].id, "ConnectionRefusedError")  # tried again later...
    assert store.claim_callbacks(hold_s=60.0) == []  # ...after the back-off, not at once
    for _ in range(MAX_DELIVERIES - 2):
        assert store.callback_failed(events[0].id, "ConnectionRefusedError")
    assert not store.callback_failed(events[0].id, "ConnectionRefusedError")  # the last one: given up


def test_an_event_held_by_a_worker_that_died_is_claimed_again_with_its_id(store):
    job = store.create(callback_url="https://hooks.example.com/pose")
    claimed = store.claim_next(30.0)
    assert claimed is not None
    store.finish(job.id, {}, claimed.attempts)
    first = store.claim_callbacks(hold_s=0.5)  # the worker that claims it dies before marking it
    assert [e.event for e in first] == ["job.succeeded"]
    time.sleep(1.0)
    again = store.claim_callbacks(hold_s=60.0)
    assert [e.id for e in again] == [first[0].id] and again[0].body == first[0].body  # same event, same id
    store.callback_delivered(again[0].id)
    time.sleep(1.0)
    assert store.claim_callbacks(hold_s=0.0) == []  # delivered: never again
