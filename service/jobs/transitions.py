"""Row writes that several store operations share: ending a job ``cancelled``, and recording a
running attempt's progress with its checkpoint and a renewed lease (fenced by the attempt)."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from service.jobs.db import Connection, Row
from service.jobs.rows import fenced_row
from service.jobs.usage import SETTLE_UNFINISHED_SQL


def set_cancelled(db: Connection, job_id: str, now: float) -> None:
    db.execute(
        "UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', error_message = :message,"
        f" {SETTLE_UNFINISHED_SQL}, finished_at = :now, updated_at = :now, owner = NULL WHERE id = :id",
        {"message": "cancelled at the caller's request", "now": now, "id": job_id},
    )


def write_progress(
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
    lease when given. More frames done or a new checkpoint restart the job's progress clock
    (``progress_at``, on the database's clock, as the lease): the stall check watches it."""
    now = time.time()
    row = fenced_row(db, job_id, token)
    merged = merged_timings(row, timings)
    sets = "frames_done = :done, frames_total = COALESCE(:total, frames_total), timings = :timings, updated_at = :now"
    values: dict[str, Any] = {"done": int(frames_done), "total": frames_total, "timings": json.dumps(merged), "now": now}
    if checkpoint is not None:
        sets += ", checkpoint = :checkpoint"
        values["checkpoint"] = json.dumps(dict(checkpoint))
    if checkpoint is not None or int(frames_done) != row["frames_done"]:
        sets += f", progress_at = {db.clock}"
    if lease_s is not None:
        sets += f", lease_until = {db.clock} + :lease_s"
        values["lease_s"] = lease_s
    db.execute(f"UPDATE jobs SET {sets} WHERE id = :id", {**values, "id": job_id})


def merged_timings(row: Row, timings: Mapping[str, float] | None) -> dict[str, float]:
    """The row's stage timings with ``timings`` written over them."""
    merged = json.loads(row["timings"])
    merged.update({str(k): float(v) for k, v in (timings or {}).items()})
    return merged
