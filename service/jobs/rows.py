"""One job's row of the jobs table: read as a `Job`, and found and locked for a write, scoped to a
client and fenced by attempt (a write of a running job names the attempt it comes from, and a
newer attempt makes it stale)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PoseError
from service.jobs.db import Connection, Row
from service.jobs.errors import conflict, not_found
from service.jobs.layout import check_id
from service.jobs.model import DELETE, Job, JobError


def job_from_row(row: Row, jobs_dir: Path) -> Job:
    """The `Job` of a row, its result paths inside ``jobs_dir / <id>``."""
    job_dir = jobs_dir / row["id"]
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
        crashes=row["crashes"],
        cancel_requested=bool(row["cancel_requested"]),
        delete_requested=int(row["cancel_requested"]) == DELETE,
        result_paths={k: job_dir / v for k, v in json.loads(row["results"]).items()},
        checkpoint=None if row["checkpoint"] is None else json.loads(row["checkpoint"]),
        lease_until=row["lease_until"],
        overlay_state=row["overlay_state"],
        disk_bytes=int(row["disk_bytes"]),
        overlay_error=None if row["overlay_error_code"] is None else JobError(row["overlay_error_code"], row["overlay_error_message"] or ""),
    )


def visible(row: Row, client: str | None) -> bool:
    """Whether a caller scoped to ``client`` (None: every client) may see the job of ``row``."""
    return client is None or row["client"] == client


def locked_row(db: Connection, job_id: str, client: str | None = None) -> Row:
    """The job's row (``client``'s, when given), locked for the rest of the write transaction."""
    row = db.execute("SELECT * FROM jobs WHERE id = :id" + db.for_update, {"id": check_id(job_id)}).fetchone()
    if row is None or not visible(row, client):
        raise not_found(job_id)
    return row


def running_row(db: Connection, job_id: str) -> Row:
    row = locked_row(db, job_id)
    if row["state"] != "running":
        raise conflict(job_id, row["state"], "running")
    return row


def fenced_row(db: Connection, job_id: str, token: int | None) -> Row:
    """The job's row if it is running under attempt ``token`` (None: any attempt); else
    ``attempt_superseded`` (409): a newer attempt owns the job, this one must stop."""
    row = running_row(db, job_id)
    if token is not None and row["attempts"] != token:
        raise PoseError(
            "attempt_superseded",
            f"job {job_id} is run by attempt {row['attempts']} now, not by attempt {token}",
            status=409,
        )
    return row
