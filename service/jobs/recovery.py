"""Recovery: running jobs whose attempt died (the process restarted, or the lease ran out) go back
to the queue and resume from their last checkpoint, or end ``cancelled`` (cancel was asked) or
failed ``interrupted`` (started too many times); none vanish."""

from __future__ import annotations

from dataclasses import dataclass

from service.jobs.db import Connection, Row
from service.jobs.transitions import set_cancelled


@dataclass(frozen=True)
class RecoveryReport:
    """What `JobStore.recover_after_restart` did."""

    requeued: list[str]  # ids put back in the queue
    failed: list[str]  # ids failed with code "interrupted" (too many attempts)
    cancelled: list[str]  # ids whose cancel had been asked before the process died
    removed_dirs: list[str]  # names of job folders or uploads that no job owned


def recover_rows(db: Connection, rows: list[Row], max_attempts: int, now: float, why: str) -> RecoveryReport:
    """Take back the running jobs of ``rows`` (id, attempts, cancel_requested) whose worker ``why``."""
    requeued: list[str] = []
    failed: list[str] = []
    cancelled: list[str] = []
    for row in rows:
        job_id = row["id"]
        if row["cancel_requested"]:
            set_cancelled(db, job_id, now)
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


def recover_expired(db: Connection, max_attempts: int, now: float) -> RecoveryReport:
    """Take back the running jobs whose lease ran out before ``now``."""
    rows = db.execute(
        "SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'"
        " AND lease_until IS NOT NULL AND lease_until < ?",
        (now,),
    ).fetchall()
    return recover_rows(db, rows, max_attempts, now, "stopped renewing its lease")


def recover_stopped(db: Connection, owner: str, requeue_running: bool, max_attempts: int, now: float) -> RecoveryReport:
    """Take back the running jobs not claimed by ``owner`` (with ``requeue_running`` False, only
    those without a lease)."""
    rows = db.execute(
        "SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running'"
        " AND (owner IS NULL OR owner != ?)" + ("" if requeue_running else " AND lease_until IS NULL"),
        (owner,),
    ).fetchall()
    return recover_rows(db, rows, max_attempts, now, "stopped")
