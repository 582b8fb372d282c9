"""Admission: how many jobs may run and wait, and when a caller refused with ``too_many_jobs``
(429) should try again."""

from __future__ import annotations

import math

from pipeline.errors import PoseError
from service.jobs.db import Connection

DEFAULT_RETRY_AFTER_S = 30.0  # before any job has finished there is no duration to go by


def queue_full(queued: int, running: int, *, max_active: int, max_queued: int) -> bool:
    """Whether a new job must wait outside: ``max_queued`` jobs wait already, beyond the
    ``max_active`` slots (of one worker) still free. With several workers running more
    than ``max_active`` jobs, the queue alone bounds admission."""
    return queued >= max_queued + max(0, max_active - running)


def check_capacity(db: Connection, *, max_active: int, max_queued: int) -> None:
    """``too_many_jobs`` (429, ``details["retry_after"]`` seconds) when the queue is full."""
    counts: dict[str, int] = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state"
        ).fetchall()
    }
    queued, running = counts.get("queued", 0), counts.get("running", 0)
    if not queue_full(queued, running, max_active=max_active, max_queued=max_queued):
        return
    retry_after = retry_after_s(db, max_active)
    raise PoseError(
        "too_many_jobs",
        f"expected at most {max_active} running and {max_queued} queued jobs, "
        f"got {running} running and {queued} queued; retry in {retry_after} s",
        status=429,
        details={
            "retry_after": retry_after,
            "running": running,
            "queued": queued,
            "max_active": max_active,
            "max_queued": max_queued,
        },
    )


def check_client_jobs(db: Connection, client: str, limit: int | None, *, max_active: int) -> None:
    """``client_job_limit`` (429, with the client's figures) when ``client`` has ``limit`` jobs
    queued or running already, so one client cannot fill the queue that all share. ``limit``
    None: no bound of its own (admins: the queue bounds them)."""
    if limit is None:
        return
    jobs = client_jobs(db, client)
    if jobs < limit:
        return
    retry_after = retry_after_s(db, max_active)
    raise PoseError(
        "client_job_limit",
        f"client {client!r} has {jobs} jobs queued or running, the limit per client is {limit} "
        f"(jobs.max_jobs_per_client); retry in {retry_after} s, when one has ended",
        status=429,
        details={"retry_after": retry_after, "client": client, "client_jobs": jobs, "max_jobs_per_client": limit},
    )


def client_jobs(db: Connection, client: str) -> int:
    """``client``'s jobs queued or running."""
    row = db.execute(
        "SELECT COUNT(*) FROM jobs WHERE client = :client AND state IN ('queued', 'running')", {"client": client}
    ).fetchone()
    return int(row[0]) if row is not None else 0


def retry_after_s(db: Connection, max_active: int) -> int:
    """Seconds until a slot is likely free: recent job length over the number of workers."""
    rows = db.execute(
        "SELECT finished_at - started_at FROM jobs WHERE state = 'succeeded' AND started_at IS NOT NULL"
        " ORDER BY finished_at DESC LIMIT 20"
    ).fetchall()
    mean = sum(r[0] for r in rows) / len(rows) if rows else DEFAULT_RETRY_AFTER_S
    return int(min(3600, max(1, math.ceil(mean / max_active))))
