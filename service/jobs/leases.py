"""Leases: a worker claims the oldest queued job for a new attempt (the attempt number is its
fencing token) with a lease it must renew; the row is taken with ``FOR UPDATE SKIP LOCKED`` where
the database has row locks, so concurrent workers claim different jobs.

Leases are granted and judged on the database's clock (`db_now`), never on the clock of the node
that writes or reads them: two nodes whose clocks disagree by more than a lease would otherwise
take each other's live jobs away, or keep dead ones."""

from __future__ import annotations

from typing import cast

from service.jobs.db import Connection, Row


def db_now(db: Connection) -> float:
    """The database's clock, in unix seconds."""
    return float(cast(Row, db.execute(f"SELECT {db.clock}").fetchone())[0])


def claim_oldest(
    db: Connection, owner: str, now: float, lease_s: float, *, limit_running: bool, max_active: int
) -> str | None:
    """Claim the oldest queued job for ``owner`` with a lease of ``lease_s``; its id, or None if
    none is queued (or, with ``limit_running``, ``max_active`` jobs with live leases run).

    ``now`` is this node's time (shown as ``started_at``); the lease and the progress clock of
    the stall check (`service.jobs.recovery.recover_stalled`) start on the database's."""
    clock = db_now(db)
    if limit_running:
        running = cast(Row, db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND (lease_until IS NULL OR lease_until >= :clock)",
            {"clock": clock},
        ).fetchone())[0]
        if running >= max_active:
            return None
    row = db.execute(
        "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, seq LIMIT 1" + db.skip_locked
    ).fetchone()
    if row is None:
        return None
    # every claim is a new attempt (a new fencing token); only crashes count against max_attempts.
    # The reason a queued job waited (`JobStore.release`) is cleared: it runs again.
    db.execute(
        "UPDATE jobs SET state = 'running', started_at = :now, updated_at = :now, attempts = attempts + 1,"
        " owner = :owner, lease_until = :lease_until, progress_at = :clock, error_code = NULL, error_message = NULL"
        " WHERE id = :id",
        {"now": now, "owner": owner, "lease_until": clock + lease_s, "clock": clock, "id": row["id"]},
    )
    job_id: str = row["id"]
    return job_id


def renew(db: Connection, job_id: str, lease_s: float) -> None:
    """Extend the job's lease to ``lease_s`` from now on the database's clock (the caller has
    checked the attempt)."""
    db.execute(f"UPDATE jobs SET lease_until = {db.clock} + :lease_s WHERE id = :id", {"lease_s": lease_s, "id": job_id})
