"""The job store when its database falters: connections the server drops are replaced, a call
caught by a fault is tried again, a database away for longer answers 503
``job_store_unavailable`` (never an internal error), and databases of earlier schemas migrate.

Faults are real: the store's PostgreSQL connections are terminated by the server
(``pg_terminate_backend``), a PostgreSQL server is restarted and kept down (a server of the
test's own, `pg_helpers.private_server`: the shared one serves other tests), and SQLite's write
lock is held by another connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from serve_helpers import InProcessHost

from pipeline.errors import PoseError
from service.jobs import JobStore
from service.jobs.db import SCHEMA_VERSION, DatabaseSettings, is_transient


def _named(url: str) -> tuple[str, str]:
    """(the URL with an application name of its own, that name): its connections can be found."""
    name = f"pose_test_{uuid.uuid4().hex[:10]}"
    return f"{url}{'&' if '?' in url else '?'}application_name={name}", name


def _connections(server: str, name: str) -> int:
    """How many server connections application ``name`` has open."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        return len(conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchall())


def terminate(server: str, name: str) -> int:
    """End every server connection of application ``name``, waiting until each is gone; how many."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_connections_the_server_drops_are_replaced_before_the_next_call(postgres_server, postgres_url, tmp_path):
    url, name = _named(postgres_url)
    with JobStore(tmp_path / "data", url=url, max_queued=10) as store:
        job = store.create()
        for _ in range(2):
            assert terminate(postgres_server, name) >= 1
            assert store.get(job.id).state == "queued"
            assert store.list()[1] >= 1
            claimed = store.claim_next(30.0)
            assert claimed is not None
            assert terminate(postgres_server, name) >= 1
            store.heartbeat(claimed.id, claimed.attempts, 30.0)
            store.finish(claimed.id, {}, claimed.attempts)
            job = store.create()
        assert store.counts() == {"succeeded": 2, "queued": 1}


def test_a_call_whose_connection_is_terminated_mid_transaction_is_retried(postgres_server, postgres_url, tmp_path):
    """The store's write waits on a row lock another session holds; its connection is terminated
    meanwhile; the call is tried again on a new connection and succeeds."""
    import psycopg

    url, name = _named(postgres_url)
    with JobStore(tmp_path / "data", url=url, max_queued=10) as store:
        job = store.create()
        for _ in range(2):
            blocker = psycopg.connect(postgres_url)
            blocker.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
            outcome: dict[str, object] = {}

            def cancel() -> None:
                try:
                    outcome["job"] = store.cancel(job.id)
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    outcome["error"] = exc

            caller = threading.Thread(target=cancel)
            caller.start()
            with psycopg.connect(postgres_server, autocommit=True) as watch:
                while not watch.execute(  # the store's call is inside its transaction, waiting for the lock
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'", (name,)
                ).fetchall():
                    threading.Event().wait(0.05)
            assert terminate(postgres_server, name) >= 1
            blocker.rollback()
            blocker.close()
            caller.join()
            assert "error" not in outcome, outcome.get("error")
            assert outcome["job"].state == "cancelled"  # type: ignore[attr-defined]
            job = store.create()


def test_a_database_away_past_the_retry_bound_is_503_with_retry_after(tmp_path):
    """SQLite's write lock held by another process stands for a database that does not answer:
    the call is retried for ``retry_s``, then refused with 503 ``job_store_unavailable``."""
    data = tmp_path / "data"
    with JobStore(data, max_queued=10, retry_s=0.5, database=DatabaseSettings(busy_timeout_s=0.05)) as store:
        job = store.create()
        other = sqlite3.connect(data / "jobs.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(PoseError) as err:
            store.cancel(job.id)
        assert err.value.code == "job_store_unavailable" and err.value.status == 503
        assert err.value.details["retry_after"] >= 1 and "database is locked" in err.value.message
        assert is_transient(err.value)
        other.execute("ROLLBACK")
        assert store.cancel(job.id).state == "cancelled"  # the database is back: the same call succeeds
        other.close()


def test_a_database_server_down_past_the_retry_bound_is_503_with_retry_after_then_answers_as_usual(
    private_postgres, tmp_path
):
    """The PostgreSQL server itself stopped (the test's own) for longer than a call retries: the
    call is refused with 503 ``job_store_unavailable`` (never an internal error); once the server
    is started again the same calls succeed, on new connections."""
    url, server = private_postgres
    with JobStore(tmp_path / "data", url=url, max_queued=10, retry_s=1.0) as store:
        job = store.create()
        server.stop("fast")
        for call in (lambda: store.get(job.id), lambda: store.cancel(job.id)):
            with pytest.raises(PoseError) as err:
                call()
            assert err.value.code == "job_store_unavailable" and err.value.status == 503
            assert err.value.details["retry_after"] >= 1 and is_transient(err.value)
        server.start()
        assert store.get(job.id).state == "queued"  # the refused cancel changed nothing
        assert store.cancel(job.id).state == "cancelled"


def test_a_permanent_error_is_raised_at_once_with_its_cause(tmp_path):
    from sqlalchemy.exc import DBAPIError

    from service.jobs.db import permanent_error

    with JobStore(tmp_path / "data", retry_s=30.0) as store:
        with pytest.raises(DBAPIError) as err, store._tx() as db:
            db.execute("SELECT no_such_column FROM jobs")
        assert not is_transient(err.value)
        mapped = permanent_error(err.value)
        assert mapped is not None and mapped.code == "job_store_error" and "no_such_column" in mapped.message


# The jobs table as the first release created it (no checkpoint, lease, sequence or client columns).
_FIRST_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created_at {real} NOT NULL,
    updated_at {real} NOT NULL, started_at {real}, finished_at {real}, frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER, timings TEXT NOT NULL DEFAULT '{{}}', error_code TEXT, error_message TEXT,
    input_path TEXT, options TEXT NOT NULL DEFAULT '{{}}', idempotency_key TEXT UNIQUE, callback_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT,
    results TEXT NOT NULL DEFAULT '{{}}'
)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_first_schema_database_migrates_in_order_and_once(backend, request, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [("a" * 32, 2.0, "k"), ("b" * 32, 1.0, None)]
    if backend == "sqlite":
        url = None
        with sqlite3.connect(data / "jobs.sqlite3") as db:
            db.execute(_FIRST_SCHEMA.format(real="REAL"))
            db.execute("PRAGMA user_version=1")
            db.executemany(
                "INSERT INTO jobs (id, kind, state, created_at, updated_at, idempotency_key)"
                " VALUES (?, 'video', 'queued', ?, ?, ?)", [(i, t, t, k) for i, t, k in rows],
            )

        def version() -> int:
            with sqlite3.connect(data / "jobs.sqlite3") as db:
                return int(db.execute("PRAGMA user_version").fetchone()[0])
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_FIRST_SCHEMA.format(real="DOUBLE PRECISION"))
            conn.execute("CREATE TABLE pose_schema (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO pose_schema (version) VALUES (1)")
            for i, t, k in rows:
                conn.execute(
                    "INSERT INTO jobs (id, kind, state, created_at, updated_at, idempotency_key)"
                    " VALUES (%s, 'video', 'queued', %s, %s, %s)", (i, t, t, k),
                )

        def version() -> int:
            with psycopg.connect(url) as conn:
                return int(conn.execute("SELECT version FROM pose_schema").fetchone()[0])

    with JobStore(data, url=url, retention_s=None, max_queued=10) as store:
        jobs, total = store.list()
        assert total == 2 and [j.client for j in jobs] == ["default", "default"]
        first = store.claim_next(30.0)  # the oldest by creation, numbered in that order
        assert first is not None and first.id == "b" * 32 and first.lease_until is not None
        assert store.create(idempotency_key="k", client="alice").id != "a" * 32  # keys are per client now
        store_id = store.store_id
    assert version() == SCHEMA_VERSION
    with JobStore(data, url=url, retention_s=None) as again:  # a migrated database opens unchanged
        assert again.store_id == store_id and again.list()[1] == 3 and version() == SCHEMA_VERSION


# -- a video job through the HTTP API while the database drops its connections or restarts ---------


class _FaultyStages:
    """The in-process model stages; while armed, the server terminates every connection of the
    job store (the worker's and the API's) when the chunks numbered in ``at`` are submitted."""

    def __init__(self, inner: Any, at: set[int], fault: Callable[[], None]) -> None:
        self.inner, self.at, self.fault = inner, at, fault
        self.armed, self.chunks = False, 0

    def submit(self, chunk: Any) -> Any:
        if self.armed:
            self.chunks += 1
            if self.chunks in self.at:
                self.fault()
        return self.inner.submit(chunk)

    def transient(self, exc: BaseException) -> PoseError | None:
        return self.inner.transient(exc)


def _video_job_through(url: str, tmp_path: Path, faults: Sequence[Callable[[], bool]]) -> list[tuple[float, float]]:
    """A video job through the real API and a real `VideoWorker`, its store at ``url``, with
    ``faults[i]`` called in the job's thread while the job is held before its chunk ``i + 2``
    (each returns whether it hit the store's connections). Right after each fault the API is
    called: the job's status, the listing and an upload at once, then the upload's cancel; each
    must answer as usual. The job must end equal to an uninterrupted run of the same video before
    it, in its first attempt. Returns, per fault, when the calls were sent and when the last of
    them answered (``time.monotonic()``)."""
    import httpx
    from videos import crossing_video

    from pipeline.tiny.cache import runner_settings
    from pipeline.video.loop import LocalStages
    from pipeline.video.runner import VideoRunner
    from service.api.app import build_app
    from service.api.backend import NoMetrics
    from service.api.context import ApiContext
    from service.settings import ApiSettings, JobSettings, ModelSettings
    from service.worker import VideoWorker

    clip = crossing_video(tmp_path / "crossing.mp4", n=14).read_bytes()  # 4 chunks of 4 frames at most
    assert len(faults) <= 3
    models = ModelSettings(profile="tiny", tiny_dir=str(tmp_path / "tiny"), download=False)
    roots = models.roots()  # the worker loads the same files
    runner = VideoRunner.from_cache(roots, download=False, device="cpu", **{**runner_settings(), "chunk_size": 4})
    settings = JobSettings(data_dir=str(tmp_path / "data"), job_store=url, chunk_size=4, max_active=1,
                           poll_interval_s=0.2, lease_s=30.0)
    host = InProcessHost()
    calls: list[tuple[float, float]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        faulted: asyncio.Queue[bool] = asyncio.Queue()
        go_on = threading.Semaphore(0)
        pending = list(faults)

        def fault() -> None:  # in the job's thread, between two store calls of the running job
            hit = pending.pop(0)()
            loop.call_soon_threadsafe(faulted.put_nowait, hit)
            go_on.acquire(timeout=300)  # the job waits here while the API is called

        stages = _FaultyStages(LocalStages(runner.detector, runner.hmr2), set(range(2, 2 + len(faults))), fault)
        host.worker = VideoWorker(stages, settings, models, map_error=host.map_error)
        ctx = ApiContext(ApiSettings(profile="tiny", auth="none"), host, NoMetrics(), jobs=settings)
        transport = httpx.ASGITransport(app=build_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as api:

            async def submit() -> dict[str, Any]:
                answer = await api.post("/v1/videos", files={"video": ("crossing.mp4", clip, "video/mp4")})
                assert answer.status_code == 202, answer.text
                return answer.json()

            async def result(job_id: str) -> dict[str, Any]:
                while (status := (await api.get(f"/v1/jobs/{job_id}")).json())["state"] in ("queued", "running"):
                    await asyncio.sleep(0.1)
                assert status["state"] == "succeeded", status
                answer = await api.get(f"/v1/jobs/{job_id}/result")
                assert answer.status_code == 200, answer.text
                return answer.json()

            uninterrupted = await result((await submit())["id"])
            stages.armed = True
            job = await submit()
            for _ in faults:
                assert await faulted.get()  # the store's connections were there when the fault hit
                sent = time.monotonic()
                status, listing, extra = await asyncio.gather(
                    api.get(f"/v1/jobs/{job['id']}"), api.get("/v1/jobs"), submit()  # an upload: accepted
                )
                assert status.status_code == 200 and status.json()["state"] == "running", status.text
                assert listing.status_code == 200 and listing.json()["total"] >= 2, listing.text
                cancelled = await api.post(f"/v1/jobs/{extra['id']}/cancel")
                assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
                calls.append((sent, time.monotonic()))
                go_on.release()
            interrupted = await result(job["id"])
            final = (await api.get(f"/v1/jobs/{job['id']}")).json()
            assert final["attempts"] == 1  # the faults cost no attempt: the job never stopped
            # the worker's loops end first: a store call of theirs after the close would open a
            # connection that nothing closes
            host.worker.stop()
            await asyncio.wait_for(asyncio.gather(host.worker._loop_task, host.worker._delivery_task), 30)
            for store in (host.worker.store, ctx.videos.store if ctx.videos else None):
                if store is not None:
                    store.close()
        for key in ("job",):  # the documents differ only in the job they describe
            uninterrupted.pop(key, None)
            interrupted.pop(key, None)
        assert interrupted == uninterrupted

    asyncio.run(scenario())
    return calls


def test_a_job_survives_its_database_connections_dropped_twice_and_the_api_answers_as_usual(
    postgres_server, postgres_url, tmp_path
):
    """The issue's promise: PostgreSQL connections terminated twice mid-job; the job ends equal to
    an uninterrupted run of the same video, and every API call made right after each drop answers
    as usual (no 500)."""
    url, name = _named(postgres_url)
    _video_job_through(url, tmp_path, [lambda: terminate(postgres_server, name) >= 1] * 2)


DOWN_S = 2.0  # a restart that keeps the server down this long: well within the API's retry bound (5 s)


def test_a_job_survives_its_database_server_restarted_and_down_for_seconds_and_the_api_answers_as_usual(
    private_postgres, tmp_path
):
    """The issue's promise for a restart of the PostgreSQL server itself (one of the test's own):
    mid-job the server is restarted (``pg_ctl restart -m fast``), then stopped, kept down for
    `DOWN_S` and started again. The job ends equal to an uninterrupted run in its first attempt
    (its worker's store calls ride out a fault for up to a lease, 30 s), and the API calls made
    right after each fault answer as usual: after the restart at once, and those sent while the
    server is down once it is back, their store calls retrying meanwhile (for up to 5 s)."""
    server_url, server = private_postgres
    url, name = _named(server_url)
    came_back: list[float] = []  # when the server was started again (it accepts nothing before)

    def restart() -> bool:
        had = _connections(server_url, name)
        server.restart("fast")
        return had >= 1

    def up() -> None:
        came_back.append(time.monotonic())
        server.start()

    def down() -> bool:
        had = _connections(server_url, name)
        server.stop("fast")
        timers.append(threading.Timer(DOWN_S, up))
        timers[-1].start()
        return had >= 1

    timers: list[threading.Timer] = []
    try:
        calls = _video_job_through(url, tmp_path, [restart, down])
    finally:
        for timer in timers:  # the server is started before the fixture stops it
            timer.join()
    sent, answered = calls[1]
    assert sent < came_back[0] < answered  # sent while the server was down, answered after it was back


def test_a_database_unreachable_at_start_answers_503_with_retry_after(tmp_path):
    """The API starts without its database: video routes answer 503 ``job_store_unavailable``
    with Retry-After (images would keep working), and the store is tried again later."""
    import httpx

    from service.api.app import build_app
    from service.api.backend import NoMetrics
    from service.api.context import ApiContext
    from service.settings import ApiSettings, JobSettings

    settings = JobSettings(data_dir=str(tmp_path / "data"), job_store="postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    ctx = ApiContext(ApiSettings(profile="tiny", auth="none"), InProcessHost(), NoMetrics(), jobs=settings)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(ctx)), base_url="http://api") as api:
            for path in ("/v1/jobs", f"/v1/jobs/{'a' * 32}"):
                answer = await api.get(path)
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "job_store_unavailable" and answer.headers["retry-after"] == "5"

    asyncio.run(scenario())
