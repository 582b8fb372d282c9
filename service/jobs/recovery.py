"""Recovery: running jobs whose attempt died (the process restarted, the lease ran out) or stopped
making progress go back to the queue and resume from their last checkpoint, or end ``cancelled``
(cancel was asked) or failed ``interrupted`` (crashed too often); none vanish.

Each of these is a crash of the attempt, counted in the job's ``crashes``; ``max_attempts`` is
judged on that count. A graceful hand-off (`JobStore.release`: a worker scaled down, redeployed or
stopped) is not a crash, although the next claim is a new attempt with a new fencing token."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.jobs.db import Connection, Row
from service.jobs.transitions import set_cancelled
from service.jobs.usage import SETTLE_UNFINISHED_SQL

_COLUMNS = "SELECT id, crashes, cancel_requested FROM jobs WHERE state = 'running'"


@dataclass(frozen=True)
class RecoveryReport:
    """What `JobStore.recover_after_restart` or `JobStore.expire_leases` did."""

    requeued: list[str]  # ids put back in the queue
    failed: list[str]  # ids failed with code "interrupted" (too many crashes)
    cancelled: list[str]  # ids whose cancel had been asked before the process died
    removed_dirs: list[str]  # names of job folders or uploads that no job owned
    stalled: list[str] = field(default_factory=list)  # ids taken back for making no progress (also requeued or failed)


def recover_rows(db: Connection, rows: list[Row], max_attempts: int, now: float, why: str) -> RecoveryReport:
    """Take back the running jobs of ``rows`` (id, crashes, cancel_requested) whose worker ``why``;
    each counts as a crash."""
    requeued: list[str] = []
    failed: list[str] = []
    cancelled: list[str] = []
    for row in rows:
        job_id = row["id"]
        crashes = int(row["crashes"]) + 1
        if row["cancel_requested"]:
            set_cancelled(db, job_id, now)
            db.execute("UPDATE jobs SET crashes = :crashes, lease_until = NULL WHERE id = :id", {"crashes": crashes, "id": job_id})
            cancelled.append(job_id)
        elif crashes >= max_attempts:
            db.execute(
                "UPDATE jobs SET state = 'failed', error_code = 'interrupted', error_message = :message,"
                f" {SETTLE_UNFINISHED_SQL}, crashes = :crashes, finished_at = :now, updated_at = :now, owner = NULL, lease_until = NULL"
                " WHERE id = :id",
                {
                    "message": f"the worker processing this job {why}, {crashes} times; "
                    f"expected at most {max_attempts} attempts",
                    "crashes": crashes, "now": now, "id": job_id,
                },
            )
            failed.append(job_id)
        else:
            # progress stays: the next attempt resumes from the job's last checkpoint
            db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, crashes = :crashes,"
                " updated_at = :now WHERE id = :id",
                {"crashes": crashes, "now": now, "id": job_id},
            )
            requeued.append(job_id)
    return RecoveryReport(requeued, failed, cancelled, [])


def recover_expired(db: Connection, max_attempts: int, clock: float, now: float) -> RecoveryReport:
    """Take back the running jobs whose lease ran out before ``clock`` (the database's time)."""
    rows = db.execute(_COLUMNS + " AND lease_until IS NOT NULL AND lease_until < :clock", {"clock": clock}).fetchall()
    return recover_rows(db, rows, max_attempts, now, "stopped renewing its lease")


def recover_stalled(db: Connection, max_attempts: int, stall_s: float, clock: float, now: float) -> RecoveryReport:
    """Take back the running jobs whose progress (frames done, checkpoints) has not moved for
    ``stall_s`` seconds of the database's clock although their lease is renewed: the attempt is
    stuck, its heartbeat alone keeps it. Only while frames remain: the steps after the last
    frame (finalising the result, drawing the overlay) report no frames."""
    rows = db.execute(
        _COLUMNS + " AND lease_until IS NOT NULL AND progress_at IS NOT NULL AND progress_at < :since"
        " AND (frames_total IS NULL OR frames_done < frames_total)",
        {"since": clock - stall_s},
    ).fetchall()
    report = recover_rows(db, rows, max_attempts, now, f"made no progress for {stall_s:g} s")
    return RecoveryReport(report.requeued, report.failed, report.cancelled, [], [r["id"] for r in rows])


def recover_stopped(db: Connection, owner: str, requeue_running: bool, max_attempts: int, now: float) -> RecoveryReport:
    """Take back the running jobs not claimed by ``owner`` (with ``requeue_running`` False, only
    those without a lease)."""
    rows = db.execute(
        _COLUMNS + " AND (owner IS NULL OR owner != :owner)" + ("" if requeue_running else " AND lease_until IS NULL"),
        {"owner": owner},
    ).fetchall()
    return recover_rows(db, rows, max_attempts, now, "stopped")
