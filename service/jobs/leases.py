"""Leases: a worker claims the oldest queued job for a new attempt (the attempt number is its
fencing token) with a lease it must renew; the row is taken with ``FOR UPDATE SKIP LOCKED`` where
the database has row locks, so concurrent workers claim different jobs."""

from __future__ import annotations

from typing import cast

from service.jobs.db import Connection, Row


def claim_oldest(
    db: Connection, owner: str, now: float, lease_s: float, *, limit_running: bool, max_active: int
) -> str | None:
    """Claim the oldest queued job for ``owner`` with a lease of ``lease_s``; its id, or None if
    none is queued (or, with ``limit_running``, ``max_active`` jobs with live leases run)."""
    if limit_running:
        running = cast(Row, db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND (lease_until IS NULL OR lease_until >= ?)",
            (now,),
        ).fetchone())[0]
        if running >= max_active:
            return None
    row = db.execute(
        "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, seq LIMIT 1" + db.skip_locked
    ).fetchone()
    if row is None:
        return None
    db.execute(
        "UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?, attempts = attempts + 1,"
        " owner = ?, lease_until = ? WHERE id = ?",
        (now, now, owner, now + lease_s, row["id"]),
    )
    job_id: str = row["id"]
    return job_id
