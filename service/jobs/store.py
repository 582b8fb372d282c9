"""The job store: persistent jobs, so a video accepted over HTTP is never lost, and neither is its result.

A web backend cannot hold a request open for the minutes a video takes, so a video is a job:
accepted at once, processed by a worker, polled for progress, fetched when done. The jobs table
lives in a database (`service.jobs.db`: SQLite beside the files by default, PostgreSQL for a
cluster) and every job has a folder under the storage folder (`service.jobs.layout`).

Every method is short and synchronous, one transaction on a connection of the store's pool
(`service.jobs.db`), safe from any thread; a transient database fault is retried within the
method (``retry_s``). A worker claims a job with a lease that it renews
(`heartbeat`, `save_checkpoint`); the claim's attempt number is its fencing token, and every
write of a running job (checkpoint, progress, finish, fail) is refused once another attempt
holds the job. A job whose lease runs out goes back to the queue (`expire_leases`) and the
next attempt resumes from its last checkpoint.

Every job belongs to the client that created it (`service.auth`). The calls a caller makes take
a ``client`` scope: a job of another client is ``job_not_found``, exactly like a job that does
not exist, so ids of other clients' jobs cannot even be probed; ``None`` is every client (an
admin, and the service's own workers). Idempotency keys are one client's: the same key from two
clients makes two jobs (`service.jobs.idempotency`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar, cast

from pipeline.atomic import atomic_open
from pipeline.errors import PoseError
from service.auth import DEFAULT_CLIENT
from service.disk import folder_bytes
from service.jobs import overlays, usage
from service.jobs.cleanup import (
    OrphanScan,
    delete_expired_rows,
    log_scan,
    mark_own_folders,
    remove_job_dirs,
    remove_paths,
    scan_orphans,
)
from service.jobs.db import Connection, DatabaseSettings, Row, open_database, retried, retry_transient
from service.jobs.errors import conflict, not_found
from service.jobs.idempotency import check_key, check_replay, discard, with_fingerprint
from service.jobs.layout import (
    check_id,
    check_name,
    move_input_into,
    result_names,
    upload_name,
    write_store_id,
)
from service.jobs.leases import claim_oldest, db_now, renew
from service.jobs.listing import check_paging, list_filter
from service.jobs.model import CANCEL, DELETE, Job, options_json
from service.jobs.outbox import Event, claim_due, create_table, emit_ended, mark_delivered, mark_failed
from service.jobs.outbox import purge as purge_outbox
from service.jobs.overlays import OverlayClaim
from service.jobs.recovery import RecoveryReport, recover_expired, recover_stalled, recover_stopped
from service.jobs.rows import fenced_row, job_from_row, locked_row, visible
from service.jobs.transitions import set_cancelled, write_progress
from service.jobs.usage import SETTLE_UNFINISHED_SQL, Reservation, Usage, admit
from service.jobs.validation import check_create_args, check_kind, check_store_args

log = logging.getLogger(__name__)

API_RETRY_S = 5.0  # how long a store call keeps retrying a transient database fault, by default
R = TypeVar("R")


class JobStore:
    """Jobs in a database plus a folder of files per job (`service.jobs.layout`).

    Every call retries a transient database fault for up to ``retry_s`` seconds (a few for the
    API, a lease for a worker), then raises 503 ``job_store_unavailable``. ``max_active`` running
    jobs at most (`claim_next`); ``max_queued`` may wait beyond those, then `create` refuses with
    ``too_many_jobs`` (429). Finished jobs are deleted by `purge_expired` after ``retention_s``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        retention_s: float | None = 7 * 24 * 3600.0,
        max_active: int = 1,
        max_queued: int = 100,
        url: str | None = None,
        retry_s: float = API_RETRY_S,
        database: DatabaseSettings | None = None,
    ) -> None:
        check_store_args(max_active, max_queued, retention_s)
        self.retry_s = retry_s  # a call retries a transient database fault this long (a worker: a lease)
        self.data_dir = Path(data_dir)
        self.retention_s = retention_s
        self.max_active = max_active
        self.max_queued = max_queued
        self.jobs_dir = self.data_dir / "jobs"
        self.uploads_dir = self.data_dir / "uploads"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        # Jobs this object claimed; recovery leaves them alone, everything else running is orphaned.
        self._owner = uuid.uuid4().hex
        # SQLite's busy wait is part of the bound: a locked database answers within ``retry_s``
        database = database or DatabaseSettings(busy_timeout_s=min(30.0, max(1.0, retry_s)))
        self._db = open_database(url, self.data_dir, database)
        with self._tx(lock_all=True) as db:
            create_table(db)
            usage.create_table(db)

    @property
    def node_local(self) -> bool:
        """True for SQLite: only processes on this machine can share this store."""
        return self._db.node_local

    @property
    def url(self) -> str:
        return self._db.url

    @property
    def store_id(self) -> str:
        """The database's own id, written into every job folder it creates (`service.jobs.cleanup`)."""
        return self._db.store_id

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry(self, fn: Callable[[], R], what: str) -> R:
        return retry_transient(fn, url=self.url, budget_s=self.retry_s, what=what)

    def _admit(self, db: Connection, client: str, client_limit: int | None, ask: Reservation, room: int | None) -> None:
        admit(db, client, client_limit, ask, room, max_active=self.max_active, max_queued=self.max_queued)

    @contextlib.contextmanager
    def _tx(self, *, lock_all: bool = False) -> Iterator[Connection]:
        """One write transaction; ``lock_all`` also serialises it with other multi-row writes."""
        with self._db.write() as db:
            if lock_all:
                db.lock_all()
            yield db

    # --- files ----------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / check_id(job_id)

    def new_upload_path(self, suffix: str = "") -> Path:
        """A fresh path to receive an upload on the same file system, so `create` can move it in."""
        return self.uploads_dir / upload_name(suffix)

    def open_result(self, job_id: str, name: str) -> Any:
        """Write a result file atomically: readers see the old file or the whole new one."""
        return atomic_open(self.job_dir(job_id) / check_name(name))

    def write_result(self, job_id: str, name: str, data: bytes) -> Path:
        with self.open_result(job_id, name) as f:
            f.write(data)
        return self.job_dir(job_id) / name

    def write_json_result(self, job_id: str, name: str, document: Any) -> Path:
        return self.write_result(job_id, name, json.dumps(document, separators=(",", ":")).encode())

    # --- jobs -----------------------------------------------------------------------------

    def create(
        self,
        kind: str = "video",
        *,
        input_file: Path | None = None,
        move_input: bool = False,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        fingerprint: str | None = None,
        client: str = DEFAULT_CLIENT,
        client_limit: int | None = None,
        reservation: Reservation | None = None,
    ) -> Job:
        """Accept a job, queued, for ``client``; once this returns, the job and its input survive any restart.

        Refused, in one transaction with the insert: 429 ``client_job_limit`` past ``client_limit``
        jobs queued or running (None: no bound), 429 ``too_many_jobs`` when the queue is full,
        507 ``client_storage_limit`` / ``storage_full`` for ``reservation``'s disk bytes
        (`service.jobs.usage`). ``move_input``: the file (see `new_upload_path`) moves into the
        job folder as ``input<suffix>``, else it is only referenced (a media-folder file). A
        known ``idempotency_key`` of the client returns its job (the new upload dropped) when
        ``fingerprint`` (a digest of the request) matches; else 422 ``idempotency_key_reused``.
        """
        check_kind(kind)
        options = with_fingerprint(options, fingerprint)
        stored_options = options_json(options)
        check_key(idempotency_key)
        check_create_args(callback_url, input_file, move_input, client)

        if idempotency_key is not None:
            existing = self.find_by_idempotency_key(idempotency_key, client)
            if existing is not None:
                discard(input_file, move_input)
                return check_replay(existing, fingerprint)
        ask = (reservation or Reservation()).with_input(Path(input_file) if input_file is not None and move_input else None)
        room = None if ask.room is None else ask.room()

        def precheck() -> None:  # refuse before moving any file
            with self._db.read() as db:
                self._admit(db, client, client_limit, ask, room)

        self._retry(precheck, "create")

        job_id = uuid.uuid4().hex
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir()
        try:
            write_store_id(job_dir, self.store_id)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        input_path: Path | None = None
        if input_file is not None:
            input_file = Path(input_file)
            input_path = move_input_into(job_dir, input_file) if move_input else input_file
        now = time.time()

        def insert() -> Job | None:
            with self._tx(lock_all=True) as db:
                if db.execute("SELECT 1 FROM jobs WHERE id = :id", {"id": job_id}).fetchone() is not None:
                    return None  # an earlier try committed, its answer was lost
                if idempotency_key is not None:
                    row = db.execute(
                        "SELECT * FROM jobs WHERE client = :client AND idempotency_key = :key",
                        {"client": client, "key": idempotency_key},
                    ).fetchone()
                    if row is not None:  # a concurrent retry won the race
                        return self._job(row)
                self._admit(db, client, client_limit, ask, room)
                if ask.upload_hold is not None:  # its bytes are on disk now, in the room just read
                    usage.end_hold(db, ask.upload_hold)
                seq = cast(Row, db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone())[0]
                db.execute(
                    "INSERT INTO jobs (id, seq, kind, state, created_at, updated_at, input_path, options,"
                    " idempotency_key, client, callback_url, overlay_state, disk_bytes, reserved_bytes, overlay_bytes)"
                    " VALUES (:id, :seq, :kind, 'queued', :now, :now, :input, :options, :key, :client, :callback, :overlay,"
                    " :disk, :reserved, :overlay_bytes)",
                    {"id": job_id, "seq": seq, "kind": kind, "now": now,
                     "input": None if input_path is None else str(input_path), "options": stored_options,
                     "key": idempotency_key, "client": client, "callback": callback_url,
                     "overlay": "pending" if options and options.get("render") else None, **ask.columns()},
                )
            return None

        try:
            replay = self._retry(insert, "create")
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        if replay is not None:
            shutil.rmtree(job_dir, ignore_errors=True)
            return check_replay(replay, fingerprint)
        log.info("job %s accepted (%s, client %s)", job_id, kind, client)
        return self.get(job_id)

    @retried
    def find_by_idempotency_key(self, key: str, client: str = DEFAULT_CLIENT) -> Job | None:
        """The job ``client`` created with this key, if any (keys of other clients are not looked at)."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE client = :client AND idempotency_key = :key", {"client": client, "key": key}
            ).fetchone()
        return None if row is None else self._job(row)

    @retried
    def get(self, job_id: str, client: str | None = None) -> Job:
        """The job, or ``job_not_found`` (404), also when it belongs to a client other than ``client``."""
        with self._db.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = :id", {"id": check_id(job_id)}).fetchone()
        if row is None or not visible(row, client):
            raise not_found(job_id)
        return self._job(row)

    @retried
    def list(
        self, offset: int = 0, limit: int = 50, state: str | None = None, client: str | None = None
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count (of that state and client, if given)."""
        check_paging(offset, limit, state)
        where, args = list_filter(state, client)
        with self._db.read() as db:
            total = cast(Row, db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone())[0]
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, seq DESC LIMIT :limit OFFSET :offset",
                {**args, "limit": limit, "offset": offset},
            ).fetchall()
        return [self._job(r) for r in rows], total

    @retried
    def claim_next(self, lease_s: float = 30.0, *, limit_running: bool = True) -> Job | None:
        """The oldest queued job, now running for this store with a new attempt number (its
        fencing token) and a lease of ``lease_s``; None if none is queued.

        ``limit_running``: also None while ``max_active`` jobs with live leases run anywhere
        (one worker); a worker among many passes False and bounds its own jobs. The row is
        taken with ``FOR UPDATE SKIP LOCKED`` where the database has row locks, so concurrent
        workers claim different jobs.
        """
        now = time.time()
        with self._tx() as db:
            job_id = claim_oldest(db, self._owner, now, lease_s, limit_running=limit_running, max_active=self.max_active)
            if job_id is None:
                return None
        return self.get(job_id)

    @retried
    def expire_leases(self, max_attempts: int = 3, stall_s: float | None = None) -> RecoveryReport:
        """Running jobs whose attempt stopped renewing its lease (its worker died, hangs or lost
        its node) go back to the queue, keeping their checkpoint, so any worker resumes them;
        or end ``cancelled`` (cancel was asked) or ``interrupted`` (crashed ``max_attempts``
        times). The old attempt's token is stale from here on: it can publish nothing.

        ``stall_s``: so do jobs whose progress has not moved for that long although their lease
        is renewed (`service.jobs.recovery.recover_stalled`); None: no stall check. Either is a
        crash of the attempt. Leases and progress are judged on the database's clock."""
        now = time.time()
        with self._tx(lock_all=True) as db:
            clock = db_now(db)
            expired = recover_expired(db, max_attempts, clock, now)
            stalled = recover_stalled(db, max_attempts, stall_s, clock, now) if stall_s is not None else None
            ended = expired.failed + expired.cancelled + ([] if stalled is None else stalled.failed + stalled.cancelled)
            emit_ended(db, ended, now, self.jobs_dir)
        if stalled is not None:
            expired = RecoveryReport(
                expired.requeued + stalled.requeued, expired.failed + stalled.failed,
                expired.cancelled + stalled.cancelled, [], stalled.stalled,
            )
            if stalled.stalled:
                log.warning("jobs without progress for %g s taken back: %s", stall_s, stalled.stalled)
        if expired.requeued or expired.failed or expired.cancelled:
            log.warning(
                "expired leases: requeued %s, failed %s, cancelled %s", expired.requeued, expired.failed, expired.cancelled
            )
        return expired

    @retried
    def counts(self) -> dict[str, int]:
        """Jobs per state (the queue length drives the video workers' autoscaling)."""
        with self._db.read() as db:
            return {r[0]: int(r[1]) for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()}

    @retried
    def release(self, job_id: str, token: int, reason: PoseError | None = None) -> None:
        """Attempt ``token`` stops (its worker shuts down, or cannot write: ``reason``, shown as
        the job's ``waiting`` until it runs again): the job goes back to the queue with its
        checkpoint, for the next attempt to resume (fenced). A hand-off, not a crash: it does
        not count against ``max_attempts``."""
        now = time.time()
        code, message = (reason.code, reason.message) if reason is not None else (None, None)
        with self._tx() as db:
            fenced_row(db, job_id, token)
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, updated_at = :now,"
                " error_code = :code, error_message = :message WHERE id = :id",
                {"now": now, "code": code, "message": message, "id": job_id},
            )

    @retried
    def heartbeat(self, job_id: str, token: int, lease_s: float = 30.0) -> None:
        """Renew the lease of attempt ``token`` (fenced), on the database's clock."""
        with self._tx() as db:
            fenced_row(db, job_id, token)
            renew(db, job_id, lease_s)

    @retried
    def save_checkpoint(
        self,
        job_id: str,
        token: int,
        checkpoint: Mapping[str, Any],
        frames_done: int,
        frames_total: int | None = None,
        timings: Mapping[str, float] | None = None,
        lease_s: float = 30.0,
    ) -> None:
        """Commit attempt ``token``'s checkpoint (a small JSON-able dict naming its files) with
        the progress it stands for, and renew the lease; refused once another attempt took over."""
        with self._tx() as db:
            write_progress(db, job_id, token, frames_done, frames_total, timings, checkpoint=checkpoint, lease_s=lease_s)

    @retried
    def update_progress(
        self,
        job_id: str,
        frames_done: int,
        frames_total: int | None = None,
        timings: Mapping[str, float] | None = None,
        token: int | None = None,
    ) -> Job:
        """Record progress of a running job; ``timings`` keys overwrite; fenced by ``token``."""
        with self._tx() as db:
            write_progress(db, job_id, token, frames_done, frames_total, timings)
        return self.get(job_id)

    @retried
    def finish(self, job_id: str, result_paths: Mapping[str, str | Path], token: int | None = None) -> Job:
        """Mark a running job succeeded with its result files (inside its folder, written already).

        A job whose cancel was asked meanwhile ends ``cancelled`` instead. With ``token`` only
        that attempt may publish (``attempt_superseded`` otherwise).
        """
        job_dir = self.job_dir(job_id)
        names = result_names(job_dir, result_paths)
        size = folder_bytes(job_dir)  # what it takes now, plus its overlay while that is pending
        now = time.time()
        with self._tx() as db:
            row = fenced_row(db, job_id, token)
            if row["cancel_requested"]:
                set_cancelled(db, job_id, now)
            else:
                db.execute(
                    "UPDATE jobs SET state = 'succeeded', results = :results, finished_at = :now, updated_at = :now,"
                    " owner = NULL, lease_until = NULL, disk_bytes = :size"
                    " + CASE WHEN overlay_state = 'pending' THEN overlay_bytes ELSE 0 END WHERE id = :id",
                    {"results": json.dumps(names), "now": now, "id": job_id, "size": size},
                )
            emit_ended(db, [job_id], now, self.jobs_dir)
        return self.get(job_id)

    @retried
    def fail(self, job_id: str, code: str, message: str, token: int | None = None) -> Job:
        """Mark a queued or running job failed with a stable code (cancelled if cancel was asked);
        with ``token`` only while that attempt runs it."""
        now = time.time()
        with self._tx() as db:
            row = locked_row(db, job_id)
            if row["state"] not in ("queued", "running"):
                raise conflict(job_id, row["state"], "queued or running")
            if token is not None:
                fenced_row(db, job_id, token)
            if row["cancel_requested"]:
                set_cancelled(db, job_id, now)
            else:
                db.execute(
                    "UPDATE jobs SET state = 'failed', error_code = :code, error_message = :message,"
                    f" {SETTLE_UNFINISHED_SQL}, finished_at = :now, updated_at = :now, owner = NULL WHERE id = :id",
                    {"code": code, "message": message, "now": now, "id": job_id},
                )
            emit_ended(db, [job_id], now, self.jobs_dir)
        return self.get(job_id)

    @retried
    def cancel(self, job_id: str, client: str | None = None) -> Job:
        """Cancel: a queued job at once; a running one is flagged and its worker stops at the next chunk."""
        now = time.time()
        with self._tx() as db:
            row = locked_row(db, job_id, client)
            if row["state"] == "queued":
                set_cancelled(db, job_id, now)
                emit_ended(db, [job_id], now, self.jobs_dir)
            elif row["state"] == "running":
                if not row["cancel_requested"]:  # a delete asked already stays asked
                    db.execute(
                        "UPDATE jobs SET cancel_requested = :flag, updated_at = :now WHERE id = :id",
                        {"flag": CANCEL, "now": now, "id": job_id},
                    )
            elif row["state"] != "cancelled":
                raise conflict(job_id, row["state"], "queued or running")
        return self.get(job_id)

    @retried
    def is_cancelled(self, job_id: str) -> bool:
        """For the worker, between chunks: stop when True (also when the job is gone)."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT state, cancel_requested FROM jobs WHERE id = :id", {"id": check_id(job_id)}
            ).fetchone()
        return row is None or row["state"] == "cancelled" or bool(row["cancel_requested"])

    @retried
    def mark_cancelled(self, job_id: str, token: int | None = None) -> Job:
        """The worker stopped a running job on request: it ends ``cancelled``."""
        now = time.time()
        with self._tx() as db:
            fenced_row(db, job_id, token)
            set_cancelled(db, job_id, now)
            emit_ended(db, [job_id], now, self.jobs_dir)
        return self.get(job_id)

    @retried
    def request_delete(self, job_id: str, client: str | None = None) -> Job | None:
        """Delete a job for its client: one that is not running at once (None); a running one is
        flagged in its row (``cancel_requested`` = delete) and the job returned: whichever
        worker holds it stops at its next chunk and deletes it (`delete_if_requested`), and a
        job whose worker died is deleted by the worker that takes its expired lease back. The
        request lives in the store, so it reaches the job's owner wherever it runs."""
        now = time.time()
        with self._tx() as db:
            row = locked_row(db, job_id, client)
            if row["state"] == "running":
                db.execute(
                    "UPDATE jobs SET cancel_requested = :flag, updated_at = :now WHERE id = :id",
                    {"flag": DELETE, "now": now, "id": job_id},
                )
            else:
                db.execute("DELETE FROM jobs WHERE id = :id", {"id": job_id})
        if row["state"] == "running":
            return self.get(job_id)
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        return None

    @retried
    def delete_if_requested(self, job_id: str) -> bool:
        """Carry out a delete asked while the job ran, once it has stopped; whether it was deleted."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, cancel_requested FROM jobs WHERE id = :id" + db.for_update, {"id": check_id(job_id)}
            ).fetchone()
            if row is None or row["state"] == "running" or int(row["cancel_requested"]) != DELETE:
                return False
            db.execute("DELETE FROM jobs WHERE id = :id", {"id": job_id})
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        log.info("job %s deleted as its client asked while it ran", job_id)
        return True

    @retried
    def delete(self, job_id: str, client: str | None = None) -> None:
        """Remove a job that is not running, and its folder (a referenced media file is kept)."""
        with self._tx() as db:
            row = locked_row(db, job_id, client)
            if row["state"] == "running":
                raise conflict(job_id, "running", "not running (cancel it first)")
            db.execute("DELETE FROM jobs WHERE id = :id", {"id": job_id})
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    # --- overlays (`service.jobs.overlays`) -----------------------------------------------------

    @retried
    def claim_overlay(self, job_id: str, lease_s: float = 30.0, max_tries: int = 3) -> OverlayClaim:
        """Take a succeeded job's pending overlay render for one more try, with a lease."""
        now = time.time()
        with self._tx() as db:
            claimed = overlays.claim(db, job_id, now, lease_s, max_tries)
            if claimed.outcome == "exhausted":
                emit_ended(db, [job_id], now, self.jobs_dir, "job.overlay_failed")
            return claimed

    @retried
    def renew_overlay(self, job_id: str, token: int, lease_s: float = 30.0) -> None:
        """Renew the lease of render try ``token`` (fenced)."""
        with self._tx() as db:
            overlays.renew(db, job_id, token, lease_s)

    @retried
    def release_overlay(self, job_id: str, token: int) -> None:
        """Render try ``token`` stops without an answer: the next claim may try again at once."""
        with self._tx() as db:
            overlays.release(db, job_id, token, time.time())

    @retried
    def overlay_ready(self, job_id: str, token: int, name: str) -> Job:
        """Render try ``token`` wrote ``name`` (a file in the job folder): the job's overlay result."""
        now, size = time.time(), folder_bytes(self.job_dir(job_id))
        with self._tx() as db:
            overlays.set_ready(db, job_id, token, name, now, size)
            emit_ended(db, [job_id], now, self.jobs_dir, "job.overlay_ready")
        return self.get(job_id)

    @retried
    def overlay_failed(self, job_id: str, token: int, code: str, message: str) -> Job:
        """Render try ``token`` failed for good: the overlay is ``failed`` with a stable code."""
        now = time.time()
        with self._tx() as db:
            overlays.set_failed(db, job_id, token, code, message, now)
            emit_ended(db, [job_id], now, self.jobs_dir, "job.overlay_failed")
        return self.get(job_id)

    @retried
    def pending_overlays(self) -> builtins.list[str]:
        """Succeeded jobs whose overlay waits for a render no live lease holds."""
        with self._db.read() as db:
            return overlays.expired(db)

    # --- maintenance ------------------------------------------------------------------------

    @retried
    def recover_after_restart(
        self,
        max_attempts: int = 3,
        *,
        requeue_running: bool = True,
        orphan_grace_s: float = 3600.0,
        now: float | None = None,
    ) -> RecoveryReport:
        """Call on startup: jobs a dead process left ``running`` are re-queued, or failed
        (``interrupted``) once they crashed ``max_attempts`` times; none vanish.

        ``requeue_running``: every running job not claimed by this store object is taken back
        at once (one worker per store, which has just restarted). Where several workers share
        the store pass False: their jobs come back only when their leases expire
        (`expire_leases`); only jobs without a lease are taken back now.

        Folders and uploads no job owns, older than ``orphan_grace_s`` (a crash between moving
        an upload in and committing its job), are removed: only folders that carry this store's
        id, and nothing while the store holds no job (`scan_orphans`). Folders of this store's
        jobs made before store ids existed are marked with it first.
        """
        now = time.time() if now is None else now
        with self._tx(lock_all=True) as db:
            report = recover_stopped(db, self._owner, requeue_running, max_attempts, now)
            emit_ended(db, report.failed + report.cancelled, now, self.jobs_dir)
            known = {r["id"] for r in db.execute("SELECT id FROM jobs").fetchall()}
        mark_own_folders(self.jobs_dir, known, self.store_id)
        scan = scan_orphans(self.jobs_dir, self.uploads_dir, known, self.store_id, now, orphan_grace_s)
        log_scan(scan)
        removed = remove_paths(scan.remove)
        if report.requeued or report.failed or report.cancelled:
            log.warning("recovered jobs: requeued %s, failed %s, cancelled %s", report.requeued, report.failed, report.cancelled)
        return RecoveryReport(report.requeued, report.failed, report.cancelled, removed)

    @retried
    def scan_orphans(self, orphan_grace_s: float = 3600.0, now: float | None = None) -> OrphanScan:
        """What orphan cleanup would remove now and what it keeps, and why; removes nothing
        (``python -m service cleanup --dry-run``)."""
        now = time.time() if now is None else now
        with self._db.read() as db:
            known = {r["id"] for r in db.execute("SELECT id FROM jobs").fetchall()}
        return scan_orphans(self.jobs_dir, self.uploads_dir, known, self.store_id, now, orphan_grace_s)

    @retried
    def purge_expired(self, now: float | None = None) -> builtins.list[str]:
        """Delete finished jobs older than the retention period; their ids."""
        if self.retention_s is None:
            return []
        now = time.time() if now is None else now
        with self._tx(lock_all=True) as db:
            ids = delete_expired_rows(db, now - self.retention_s)
            purge_outbox(db, now - self.retention_s)
        remove_job_dirs(self.jobs_dir, ids)
        return ids

    @retried
    def check_admission(self, client: str, limit: int | None, reservation: Reservation | None = None) -> None:
        """The bounds `create` checks (again) but the disk room: for a route, before it reads an upload."""
        with self._db.read() as db:
            self._admit(db, client, limit, reservation or Reservation(), None)

    @retried
    def usage(self, client: str) -> Usage:
        """``client``'s jobs and bytes (`service.jobs.usage`)."""
        with self._db.read() as db:
            return usage.read_usage(db, client)

    @retried
    def reserved_bytes(self) -> int:
        """Bytes promised and not yet on disk (`service.jobs.usage.reserved_bytes`)."""
        with self._db.read() as db:
            return usage.reserved_bytes(db)

    @retried
    def hold_upload(self, hold: str, nbytes: int, room: int, hold_s: float) -> None:
        """Hold disk room for an upload streaming in (`service.jobs.usage.hold_upload`)."""
        with self._tx(lock_all=True) as db:
            usage.hold_upload(db, hold, nbytes, room, hold_s)

    @retried
    def end_upload_hold(self, hold: str) -> None:
        with self._tx() as db:
            usage.end_hold(db, hold)

    # --- callbacks (`service.jobs.outbox`) ---------------------------------------------------

    @retried
    def claim_callbacks(self, hold_s: float = 60.0, limit: int = 16) -> builtins.list[Event]:
        """Callback events due for delivery, held for this caller for ``hold_s``."""
        with self._tx() as db:
            return claim_due(db, db_now(db), hold_s, limit)

    @retried
    def callback_delivered(self, event_id: str) -> None:
        with self._tx() as db:
            mark_delivered(db, event_id, db_now(db))

    @retried
    def callback_failed(self, event_id: str, error: str) -> bool:
        """A delivery failed; whether the event will be tried again."""
        with self._tx() as db:
            return mark_failed(db, event_id, db_now(db), error)

    def _job(self, row: Row) -> Job:
        return job_from_row(row, self.jobs_dir)
