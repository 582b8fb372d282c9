"""Persistent jobs: a video accepted over HTTP is never lost, and neither is its result.

A web backend cannot hold a request open for the minutes a video takes, so a video is a job:
accepted at once, processed by a worker, polled for progress, fetched when done. The jobs table
lives in a database (`pipeline.job_db`: SQLite beside the files by default, PostgreSQL for a
cluster) and every job has a folder under the storage folder, which on a cluster is a mount
every node shares::

    <data_dir>/jobs.sqlite3                    the SQLite database (when no job_store URL is set)
    <data_dir>/uploads/<random><suffix>        uploads being received (`new_upload_path`)
    <data_dir>/jobs/<id>/input.<ext>           the accepted input, moved in by `create`
    <data_dir>/jobs/<id>/result*.*, ...        results and checkpoints, each written atomically

Every method is short and synchronous and one connection guarded by a lock serves all threads
and asyncio tasks of a process. A worker claims a job with a lease that it renews
(`heartbeat`, `save_checkpoint`); the claim's attempt number is its fencing token, and every
write of a running job (checkpoint, progress, finish, fail) is refused once another attempt
holds the job. A job whose lease runs out goes back to the queue (`expire_leases`) and the
next attempt resumes from its last checkpoint.

Every job belongs to the client that created it (`pipeline.auth`). The calls a caller makes take
a ``client`` scope: a job of another client is ``job_not_found``, exactly like a job that does
not exist, so ids of other clients' jobs cannot even be probed; ``None`` is every client (an
admin, and the service's own workers). Idempotency keys are one client's: the same key from two
clients makes two jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from .atomic import atomic_open, fsync_dir
from .auth import DEFAULT_CLIENT
from .errors import InputError, PoseError
from .job_db import Connection, Row, open_database

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FINGERPRINT_OPTION = "request_sha256"  # job option: digest of the request that created the job
MAX_OFFSET = 10**9  # paging offsets past this are refused (SQL integers are 64-bit, clients' are not)

_ID = re.compile(r"[0-9a-f]{32}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,10})?")
_DEFAULT_RETRY_AFTER_S = 30.0  # before any job has finished there is no duration to go by

@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable code and a message for humans."""

    code: str  # stable, e.g. "video_corrupt", "interrupted", "cancelled"
    message: str  # human-readable reason


@dataclass(frozen=True)
class Job:
    """One job as stored. Paths are absolute; `to_dict` leaves them out of what callers see."""

    id: str  # uuid4 hex, 32 characters
    kind: str  # what the job does, e.g. "video"
    state: str  # one of JOB_STATES
    created_at: float  # unix seconds
    updated_at: float  # unix seconds of the last change (progress doubles as a heartbeat)
    started_at: float | None  # unix seconds of the latest claim
    finished_at: float | None  # unix seconds it reached a terminal state
    frames_done: int  # frames processed so far
    frames_total: int | None  # frames expected, once known
    timings: dict[str, float]  # seconds per stage, as last reported by the worker
    error: JobError | None  # set for failed and cancelled jobs
    input_path: Path | None  # the input file (inside the job folder, or a referenced media file)
    options: dict[str, Any]  # the caller's processing options, as JSON
    idempotency_key: str | None  # the caller's key: a retried create returns this job
    callback_url: str | None  # where the caller wants to be told about completion
    attempts: int  # how many times a worker has started it; the running attempt's fencing token
    cancel_requested: bool  # cancel was asked while it ran; the worker stops at the next chunk
    client: str = DEFAULT_CLIENT  # the client that created it: only it (and admins) may see it
    result_paths: dict[str, Path] = field(default_factory=dict)  # result name -> file
    checkpoint: dict[str, Any] | None = None  # the last committed checkpoint (small; see `save_checkpoint`)
    lease_until: float | None = None  # unix seconds; a running job past it may be taken over

    @property
    def progress(self) -> float | None:
        """Fraction done in [0, 1], or None before the frame count is known."""
        if not self.frames_total:
            return None
        return min(1.0, self.frames_done / self.frames_total)

    def to_dict(self) -> dict[str, Any]:
        """What a caller may see: no server paths, results by name only."""
        return {
            "id": self.id,
            "client": self.client,
            "kind": self.kind,
            "state": self.state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {
                "frames_done": self.frames_done,
                "frames_total": self.frames_total,
                "fraction": self.progress,
                "resumed_from_frame": None if not self.checkpoint else self.checkpoint.get("resumed_from"),
            },
            "timings": dict(self.timings),
            "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
            "options": dict(self.options),
            "idempotency_key": self.idempotency_key,
            "callback_url": self.callback_url,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "results": sorted(self.result_paths),
        }


@dataclass(frozen=True)
class RecoveryReport:
    """What `JobStore.recover_after_restart` did."""

    requeued: list[str]  # ids put back in the queue
    failed: list[str]  # ids failed with code "interrupted" (too many attempts)
    cancelled: list[str]  # ids whose cancel had been asked before the process died
    removed_dirs: list[str]  # names of job folders or uploads that no job owned


class JobStore:
    """Jobs in SQLite plus a folder of files per job; see the module docstring for the layout.

    ``max_active`` running jobs at most (`claim_next` hands out no more); ``max_queued`` jobs may
    wait beyond those, after which `create` refuses with ``too_many_jobs`` (429, ``retry_after``).
    Finished jobs are deleted by `purge_expired` after ``retention_s`` seconds (None: kept).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        retention_s: float | None = 7 * 24 * 3600.0,
        max_active: int = 1,
        max_queued: int = 100,
        url: str | None = None,
    ) -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, got {max_active}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be at least 0, got {max_queued}")
        if retention_s is not None and retention_s <= 0:
            raise ValueError(f"retention_s must be positive or None, got {retention_s}")
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
        self._db = open_database(url, self.data_dir)

    @property
    def node_local(self) -> bool:
        """True for SQLite: only processes on this machine can share this store."""
        return self._db.node_local

    @property
    def url(self) -> str:
        return self._db.url

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, *, lock_all: bool = False) -> Any:
        """One write transaction; ``lock_all`` also serialises it with other multi-row writes."""

        @contextlib.contextmanager
        def tx() -> Iterator[Connection]:
            with self._db.write() as db:
                if lock_all:
                    db.lock_all()
                yield db

        return tx()

    # --- files ----------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / _check_id(job_id)

    def new_upload_path(self, suffix: str = "") -> Path:
        """A fresh path to receive an upload on the same file system, so `create` can move it in."""
        if not _SUFFIX.fullmatch(suffix):
            raise InputError("suffix_invalid", f"expected a file suffix like '.mp4', got {suffix!r}")
        return self.uploads_dir / f"{uuid.uuid4().hex}{suffix}"

    def open_result(self, job_id: str, name: str) -> Any:
        """Write a result file atomically: readers see the old file or the whole new one."""
        return atomic_open(self.job_dir(job_id) / _check_name(name))

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
    ) -> Job:
        """Accept a job, queued, for ``client``. Once this returns, the job and its input survive any restart.

        ``move_input``: the file (an upload, see `new_upload_path`) is moved into the job folder
        as ``input<suffix>``; otherwise ``input_file`` is only referenced (a media-folder file).
        A known ``idempotency_key`` of the same client returns the existing job and drops the new upload, when the
        request's ``fingerprint`` (a digest of what was sent, kept with the job) is the one the
        job was made from; another payload under the same key is refused (422
        ``idempotency_key_reused``), as the IETF Idempotency-Key draft asks.
        Raises ``too_many_jobs`` (429, ``details["retry_after"]`` seconds) when full.
        """
        if not kind or not isinstance(kind, str):
            raise InputError("job_kind_invalid", f"expected a job kind such as 'video', got {kind!r}")
        if fingerprint is not None:
            options = {**(options or {}), FINGERPRINT_OPTION: str(fingerprint)}
        options_json = _options_json(options)
        if idempotency_key is not None and not (isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 255):
            raise InputError("idempotency_key_invalid", f"expected 1 to 255 characters, got {idempotency_key!r}")
        if callback_url is not None and not re.match(r"https?://[^\s/]+", str(callback_url)):
            raise InputError("callback_url_invalid", f"expected an http(s) URL, got {callback_url!r}")
        if move_input and input_file is None:
            raise ValueError("move_input needs an input_file")
        if not isinstance(client, str) or not client:
            raise ValueError(f"expected the id of the client creating the job, got {client!r}")

        if idempotency_key is not None:
            existing = self.find_by_idempotency_key(idempotency_key, client)
            if existing is not None:
                _discard(input_file, move_input)
                return check_replay(existing, fingerprint)
        with self._db.read() as db:
            self._check_capacity(db)  # refuse before moving any file

        job_id = uuid.uuid4().hex
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir()
        input_path: Path | None = None
        if input_file is not None:
            input_file = Path(input_file)
            if move_input:
                input_path = job_dir / ("input" + input_file.suffix.lower())
                try:
                    os.replace(input_file, input_path)
                except OSError:
                    shutil.rmtree(job_dir, ignore_errors=True)
                    raise
                fsync_dir(job_dir)
            else:
                input_path = input_file
        now = time.time()
        try:
            with self._tx(lock_all=True) as db:
                if idempotency_key is not None:
                    row = db.execute(
                        "SELECT * FROM jobs WHERE client = ? AND idempotency_key = ?", (client, idempotency_key)
                    ).fetchone()
                    if row is not None:  # a concurrent retry won the race
                        shutil.rmtree(job_dir, ignore_errors=True)
                        return check_replay(self._job(row), fingerprint)
                self._check_capacity(db)
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
                db.execute(
                    "INSERT INTO jobs (id, seq, kind, state, created_at, updated_at, input_path, options,"
                    " idempotency_key, client, callback_url) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, seq, kind, now, now, None if input_path is None else str(input_path), options_json,
                     idempotency_key, client, callback_url),
                )
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        log.info("job %s accepted (%s, client %s)", job_id, kind, client)
        return self.get(job_id)

    def find_by_idempotency_key(self, key: str, client: str = DEFAULT_CLIENT) -> Job | None:
        """The job ``client`` created with this key, if any (keys of other clients are not looked at)."""
        with self._db.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE client = ? AND idempotency_key = ?", (client, key)).fetchone()
        return None if row is None else self._job(row)

    def get(self, job_id: str, client: str | None = None) -> Job:
        """The job, or ``job_not_found`` (404), also when it belongs to a client other than ``client``."""
        with self._db.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (_check_id(job_id),)).fetchone()
        if row is None or not _visible(row, client):
            raise _not_found(job_id)
        return self._job(row)

    def list(
        self, offset: int = 0, limit: int = 50, state: str | None = None, client: str | None = None
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count (of that state and client, if given)."""
        if not (isinstance(offset, int) and 0 <= offset <= MAX_OFFSET):
            raise InputError("paging_invalid", f"expected 0 <= offset <= {MAX_OFFSET}, got {offset!r}")
        if not (isinstance(limit, int) and 1 <= limit <= 1000):
            raise InputError("paging_invalid", f"expected 1 <= limit <= 1000, got {limit!r}")
        if state is not None and state not in JOB_STATES:
            raise InputError("state_invalid", f"expected one of {', '.join(JOB_STATES)}, got {state!r}")
        conditions, args = [], []
        if state:
            conditions.append("state = ?")
            args.append(state)
        if client is not None:
            conditions.append("client = ?")
            args.append(client)
        where = "WHERE " + " AND ".join(conditions) if conditions else ""
        with self._db.read() as db:
            total = db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [self._job(r) for r in rows], total

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
            if limit_running:
                running = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND (lease_until IS NULL OR lease_until >= ?)",
                    (now,),
                ).fetchone()[0]
                if running >= self.max_active:
                    return None
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, seq LIMIT 1" + db.skip_locked
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?, attempts = attempts + 1,"
                " owner = ?, lease_until = ? WHERE id = ?",
                (now, now, self._owner, now + lease_s, row["id"]),
            )
        return self.get(row["id"])

    def expire_leases(self, max_attempts: int = 3, now: float | None = None) -> RecoveryReport:
        """Running jobs whose attempt stopped renewing its lease (its worker died, hangs or lost
        its node) go back to the queue, keeping their checkpoint, so any worker resumes them;
        or end ``cancelled`` (cancel was asked) or ``interrupted`` (started ``max_attempts``
        times). The old attempt's token is stale from here on: it can publish nothing."""
        now = time.time() if now is None else now
        with self._tx(lock_all=True) as db:
            rows = db.execute(
                "SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'"
                " AND lease_until IS NOT NULL AND lease_until < ?",
                (now,),
            ).fetchall()
            report = self._recover_rows(db, rows, max_attempts, now, "stopped renewing its lease")
        if report.requeued or report.failed or report.cancelled:
            log.warning(
                "expired leases: requeued %s, failed %s, cancelled %s", report.requeued, report.failed, report.cancelled
            )
        return report

    def _recover_rows(self, db: Connection, rows: list[Row], max_attempts: int, now: float, why: str) -> RecoveryReport:
        requeued: list[str] = []
        failed: list[str] = []
        cancelled: list[str] = []
        for row in rows:
            job_id = row["id"]
            if row["cancel_requested"]:
                self._set_cancelled(db, job_id, now)
                cancelled.append(job_id)
            elif row["attempts"] >= max_attempts:
                db.execute(
                    "UPDATE jobs SET state = 'failed', error_code = 'interrupted', error_message = ?,"
                    " finished_at = ?, updated_at = ?, owner = NULL, lease_until = NULL WHERE id = ?",
                    (
                        f"the worker processing this job {why}, {row['attempts']} times; "
                        f"expected at most {max_attempts} attempts",
                        now, now, job_id,
                    ),
                )
                failed.append(job_id)
            else:
                # progress stays: the next attempt resumes from the job's last checkpoint
                db.execute(
                    "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
                requeued.append(job_id)
        return RecoveryReport(requeued, failed, cancelled, [])

    def _fenced_row(self, db: Connection, job_id: str, token: int | None) -> Row:
        """The job's row if it is running under attempt ``token`` (None: any attempt); else
        ``attempt_superseded`` (409): a newer attempt owns the job, this one must stop."""
        row = self._running_row(db, job_id)
        if token is not None and row["attempts"] != token:
            raise PoseError(
                "attempt_superseded",
                f"job {job_id} is run by attempt {row['attempts']} now, not by attempt {token}",
                status=409,
            )
        return row

    def counts(self) -> dict[str, int]:
        """Jobs per state (the queue length drives the video workers' autoscaling)."""
        with self._db.read() as db:
            return {r[0]: int(r[1]) for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()}

    def release(self, job_id: str, token: int) -> None:
        """Attempt ``token`` stops (its worker shuts down): the job goes back to the queue with
        its checkpoint, for the next attempt to resume at once (fenced)."""
        now = time.time()
        with self._tx() as db:
            self._fenced_row(db, job_id, token)
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                (now, job_id),
            )

    def heartbeat(self, job_id: str, token: int, lease_s: float = 30.0) -> None:
        """Renew the lease of attempt ``token`` (fenced)."""
        now = time.time()
        with self._tx() as db:
            self._fenced_row(db, job_id, token)
            db.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (now + lease_s, job_id))

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
            self._write_progress(db, job_id, token, frames_done, frames_total, timings, checkpoint=checkpoint, lease_s=lease_s)

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
            self._write_progress(db, job_id, token, frames_done, frames_total, timings)
        return self.get(job_id)

    def finish(self, job_id: str, result_paths: Mapping[str, str | Path], token: int | None = None) -> Job:
        """Mark a running job succeeded with its result files (inside its folder, written already).

        A job whose cancel was asked meanwhile ends ``cancelled`` instead. With ``token`` only
        that attempt may publish (``attempt_superseded`` otherwise).
        """
        job_dir = self.job_dir(job_id)
        names: dict[str, str] = {}
        for name, path in result_paths.items():
            full = (job_dir / path).resolve()
            if not full.is_relative_to(job_dir.resolve()) or not full.is_file():
                raise ValueError(f"result {name!r} must be an existing file in the job folder, got {path}")
            names[_check_name(name)] = full.relative_to(job_dir.resolve()).as_posix()
        now = time.time()
        with self._tx() as db:
            row = self._fenced_row(db, job_id, token)
            if row["cancel_requested"]:
                self._set_cancelled(db, job_id, now)
            else:
                db.execute(
                    "UPDATE jobs SET state = 'succeeded', results = ?, finished_at = ?, updated_at = ?,"
                    " owner = NULL, lease_until = NULL WHERE id = ?",
                    (json.dumps(names), now, now, job_id),
                )
        return self.get(job_id)

    def fail(self, job_id: str, code: str, message: str, token: int | None = None) -> Job:
        """Mark a queued or running job failed with a stable code (cancelled if cancel was asked);
        with ``token`` only while that attempt runs it."""
        now = time.time()
        with self._tx() as db:
            row = self._row(db, job_id)
            if row["state"] not in ("queued", "running"):
                raise _conflict(job_id, row["state"], "queued or running")
            if token is not None:
                self._fenced_row(db, job_id, token)
            if row["cancel_requested"]:
                self._set_cancelled(db, job_id, now)
            else:
                db.execute(
                    "UPDATE jobs SET state = 'failed', error_code = ?, error_message = ?, finished_at = ?,"
                    " updated_at = ?, owner = NULL WHERE id = ?",
                    (code, message, now, now, job_id),
                )
        return self.get(job_id)

    def cancel(self, job_id: str, client: str | None = None) -> Job:
        """Cancel: a queued job at once; a running one is flagged and its worker stops at the next chunk."""
        now = time.time()
        with self._tx() as db:
            row = self._row(db, job_id, client)
            if row["state"] == "queued":
                self._set_cancelled(db, job_id, now)
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, job_id))
            elif row["state"] != "cancelled":
                raise _conflict(job_id, row["state"], "queued or running")
        return self.get(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        """For the worker, between chunks: stop when True (also when the job is gone)."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT state, cancel_requested FROM jobs WHERE id = ?", (_check_id(job_id),)
            ).fetchone()
        return row is None or row["state"] == "cancelled" or bool(row["cancel_requested"])

    def mark_cancelled(self, job_id: str, token: int | None = None) -> Job:
        """The worker stopped a running job on request: it ends ``cancelled``."""
        now = time.time()
        with self._tx() as db:
            self._fenced_row(db, job_id, token)
            self._set_cancelled(db, job_id, now)
        return self.get(job_id)

    def delete(self, job_id: str, client: str | None = None) -> None:
        """Remove a job that is not running, and its folder (a referenced media file is kept)."""
        with self._tx() as db:
            row = self._row(db, job_id, client)
            if row["state"] == "running":
                raise _conflict(job_id, "running", "not running (cancel it first)")
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    # --- maintenance ------------------------------------------------------------------------

    def recover_after_restart(
        self,
        max_attempts: int = 3,
        *,
        requeue_running: bool = True,
        orphan_grace_s: float = 3600.0,
        now: float | None = None,
    ) -> RecoveryReport:
        """Call on startup: jobs a dead process left ``running`` are re-queued, or failed
        (``interrupted``) once they were started ``max_attempts`` times; none vanish.

        ``requeue_running``: every running job not claimed by this store object is taken back
        at once (one worker per store, which has just restarted). Where several workers share
        the store pass False: their jobs come back only when their leases expire
        (`expire_leases`); only jobs without a lease are taken back now.

        Folders and uploads no job owns, older than ``orphan_grace_s`` (a crash between moving
        an upload in and committing its job), are removed.
        """
        now = time.time() if now is None else now
        with self._tx(lock_all=True) as db:
            rows = db.execute(
                "SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'"
                " AND (owner IS NULL OR owner != ?)" + ("" if requeue_running else " AND lease_until IS NULL"),
                (self._owner,),
            ).fetchall()
            report = self._recover_rows(db, rows, max_attempts, now, "stopped")
            known = {r["id"] for r in db.execute("SELECT id FROM jobs").fetchall()}
        removed: list[str] = []
        for path in [*self.jobs_dir.iterdir(), *self.uploads_dir.iterdir()]:
            is_job_dir = path.parent == self.jobs_dir
            if is_job_dir and path.name in known:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.lstat().st_mtime < orphan_grace_s:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                removed.append(path.name)
        if report.requeued or report.failed or report.cancelled:
            log.warning("recovered jobs: requeued %s, failed %s, cancelled %s", report.requeued, report.failed, report.cancelled)
        return RecoveryReport(report.requeued, report.failed, report.cancelled, removed)

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Delete finished jobs older than the retention period; their ids."""
        if self.retention_s is None:
            return []
        now = time.time() if now is None else now
        with self._tx(lock_all=True) as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at <= ?",
                (now - self.retention_s,),
            ).fetchall()
            ids = [r["id"] for r in rows]
            for job_id in ids:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        for job_id in ids:
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        return ids

    # --- internals --------------------------------------------------------------------------

    def _write_progress(
        self,
        db: Connection,
        job_id: str,
        token: int | None,
        frames_done: int,
        frames_total: int | None,
        timings: Mapping[str, float] | None,
        *,
        checkpoint: Mapping[str, Any] | None = None,
        lease_s: float | None = None,
    ) -> None:
        """Progress of a running job (fenced by ``token``), with its checkpoint and a renewed
        lease when given."""
        now = time.time()
        merged = _merged_timings(self._fenced_row(db, job_id, token), timings)
        sets = "frames_done = ?, frames_total = COALESCE(?, frames_total), timings = ?, updated_at = ?"
        values: list[Any] = [int(frames_done), frames_total, json.dumps(merged), now]
        if checkpoint is not None:
            sets += ", checkpoint = ?"
            values.append(json.dumps(dict(checkpoint)))
        if lease_s is not None:
            sets += ", lease_until = ?"
            values.append(now + lease_s)
        db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values, job_id))

    def queue_full(self, queued: int, running: int) -> bool:
        """Whether a new job must wait outside: ``max_queued`` jobs wait already, beyond the
        ``max_active`` slots (of one worker) still free. With several workers running more
        than ``max_active`` jobs, the queue alone bounds admission."""
        return queued >= self.max_queued + max(0, self.max_active - running)

    def _check_capacity(self, db: Connection) -> None:
        counts = dict(
            db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state"
            ).fetchall()
        )
        queued, running = counts.get("queued", 0), counts.get("running", 0)
        if not self.queue_full(queued, running):
            return
        retry_after = self._retry_after(db)
        raise PoseError(
            "too_many_jobs",
            f"expected at most {self.max_active} running and {self.max_queued} queued jobs, "
            f"got {running} running and {queued} queued; retry in {retry_after} s",
            status=429,
            details={
                "retry_after": retry_after,
                "running": running,
                "queued": queued,
                "max_active": self.max_active,
                "max_queued": self.max_queued,
            },
        )

    def _retry_after(self, db: Connection) -> int:
        """Seconds until a slot is likely free: recent job length over the number of workers."""
        rows = db.execute(
            "SELECT finished_at - started_at FROM jobs WHERE state = 'succeeded' AND started_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT 20"
        ).fetchall()
        mean = sum(r[0] for r in rows) / len(rows) if rows else _DEFAULT_RETRY_AFTER_S
        return int(min(3600, max(1, math.ceil(mean / self.max_active))))

    def _row(self, db: Connection, job_id: str, client: str | None = None) -> Row:
        """The job's row (``client``'s, when given), locked for the rest of the write transaction."""
        row = db.execute("SELECT * FROM jobs WHERE id = ?" + db.for_update, (_check_id(job_id),)).fetchone()
        if row is None or not _visible(row, client):
            raise _not_found(job_id)
        return row

    def _running_row(self, db: Connection, job_id: str) -> Row:
        row = self._row(db, job_id)
        if row["state"] != "running":
            raise _conflict(job_id, row["state"], "running")
        return row

    @staticmethod
    def _set_cancelled(db: Connection, job_id: str, now: float) -> None:
        db.execute(
            "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', error_message = ?,"
            " finished_at = ?, updated_at = ?, owner = NULL WHERE id = ?",
            ("cancelled at the caller's request", now, now, job_id),
        )

    def _job(self, row: Row) -> Job:
        job_dir = self.jobs_dir / row["id"]
        error = None if row["error_code"] is None else JobError(row["error_code"], row["error_message"] or "")
        return Job(
            id=row["id"],
            kind=row["kind"],
            state=row["state"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            frames_done=row["frames_done"],
            frames_total=row["frames_total"],
            timings=json.loads(row["timings"]),
            error=error,
            input_path=None if row["input_path"] is None else Path(row["input_path"]),
            options=json.loads(row["options"]),
            idempotency_key=row["idempotency_key"],
            callback_url=row["callback_url"],
            client=row["client"],
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            result_paths={k: job_dir / v for k, v in json.loads(row["results"]).items()},
            checkpoint=None if row["checkpoint"] is None else json.loads(row["checkpoint"]),
            lease_until=row["lease_until"],
        )


def _check_id(job_id: str) -> str:
    """Job ids name folders: anything but 32 lowercase hex digits is simply not a job."""
    if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
        raise _not_found(job_id)
    return job_id


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise ValueError(f"expected a plain file name (letters, digits, '._-'), got {name!r}")
    return name


def _visible(row: Row, client: str | None) -> bool:
    """Whether a caller scoped to ``client`` (None: every client) may see the job of ``row``."""
    return client is None or row["client"] == client


def _not_found(job_id: object) -> PoseError:
    return PoseError("job_not_found", f"expected an existing job id, got {job_id!r}", status=404)


def _conflict(job_id: str, state: str, expected: str) -> PoseError:
    return PoseError(
        "job_state_conflict",
        f"expected job {job_id} to be {expected}, got {state}",
        status=409,
        details={"state": state},
    )


def check_replay(job: Job, fingerprint: str | None) -> Job:
    """``job``, found by a request's idempotency key, if the request is the one that made it."""
    kept = job.options.get(FINGERPRINT_OPTION)
    if fingerprint is not None and kept is not None and kept != fingerprint:
        raise InputError(
            "idempotency_key_reused",
            f"the Idempotency-Key was used for another request (job {job.id}); use a new key for a new request",
            status=422,
            details={"job_id": job.id},
        )
    return job


def _options_json(options: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(options or {}), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError("job_options_invalid", f"expected JSON-serialisable options, got {exc}") from exc


def _discard(input_file: Path | None, moved: bool) -> None:
    """Drop an upload that a replayed request made redundant (never a referenced file)."""
    if moved and input_file is not None:
        with contextlib.suppress(FileNotFoundError):
            Path(input_file).unlink()


def _merged_timings(row: Row, timings: Mapping[str, float] | None) -> dict[str, float]:
    """The row's stage timings with ``timings`` written over them."""
    merged = json.loads(row["timings"])
    merged.update({str(k): float(v) for k, v in (timings or {}).items()})
    return merged
