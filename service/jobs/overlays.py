"""The overlay of a ``render=true`` job: an artifact drawn after the job's result is published,
with its own state, so a failed or lost render never fails or delays the result.

A render job is accepted with its overlay ``pending``. Once the job has ``succeeded``, a worker
claims the render (`claim`): the try count is the render's fencing token and the claim holds a
lease the worker renews while the Renderer draws. The render ends ``ready`` (its file becomes the
job's ``overlay`` result) or ``failed`` with a code. A render whose worker died stops renewing;
any worker then claims it again (`expired`), up to ``max_tries`` tries, after which it fails
``renderer_unavailable``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import PoseError
from service.jobs.db import Connection, Row
from service.jobs.layout import check_name
from service.jobs.leases import db_now
from service.jobs.rows import locked_row

ClaimOutcome = Literal["claimed", "busy", "done", "exhausted"]


@dataclass(frozen=True)
class OverlayClaim:
    """What `claim` found: ``claimed`` (this caller renders, try ``token``), ``busy`` (another
    worker's lease is live), ``done`` (nothing to render: ready, failed, or no result), or
    ``exhausted`` (tried ``max_tries`` times: failed now, its callback is due)."""

    outcome: ClaimOutcome
    token: int = 0


def claim(db: Connection, job_id: str, now: float, lease_s: float, max_tries: int) -> OverlayClaim:
    """Take the job's pending render for one more try (the row is locked by the caller's
    transaction). Its lease is granted and judged on the database's clock, as a job's
    (`service.jobs.leases`); ``now`` is this node's, shown as ``updated_at``."""
    row = locked_row(db, job_id)
    if row["state"] != "succeeded" or row["overlay_state"] != "pending":
        return OverlayClaim("done")
    clock = db_now(db)
    if row["overlay_lease_until"] is not None and row["overlay_lease_until"] > clock:
        return OverlayClaim("busy")
    tries = int(row["overlay_tries"])
    if tries >= max_tries:
        _set_failed(
            db, job_id, now, "renderer_unavailable",
            f"the overlay render was started {tries} times without finishing (its worker or the Renderer was lost)",
        )
        return OverlayClaim("exhausted")
    db.execute(
        "UPDATE jobs SET overlay_tries = :tries, overlay_lease_until = :until, updated_at = :now WHERE id = :id",
        {"tries": tries + 1, "until": clock + lease_s, "now": now, "id": job_id},
    )
    return OverlayClaim("claimed", tries + 1)


def fenced(db: Connection, job_id: str, token: int) -> Row:
    """The row while try ``token`` still holds the pending render; else ``attempt_superseded``."""
    row = locked_row(db, job_id)
    if row["overlay_state"] != "pending" or int(row["overlay_tries"]) != token:
        raise PoseError(
            "attempt_superseded",
            f"the overlay of job {job_id} is {row['overlay_state']} at try {row['overlay_tries']}, not pending at try {token}",
            status=409,
        )
    return row


def renew(db: Connection, job_id: str, token: int, lease_s: float) -> None:
    """Try ``token``'s lease runs ``lease_s`` more seconds of the database's clock."""
    fenced(db, job_id, token)
    db.execute("UPDATE jobs SET overlay_lease_until = :until WHERE id = :id", {"until": db_now(db) + lease_s, "id": job_id})


def release(db: Connection, job_id: str, token: int, now: float) -> None:
    """Try ``token`` gives the render up (to be tried again at once, by any worker)."""
    fenced(db, job_id, token)
    db.execute("UPDATE jobs SET overlay_lease_until = NULL, updated_at = :now WHERE id = :id", {"now": now, "id": job_id})


def set_ready(db: Connection, job_id: str, token: int, name: str, now: float, disk_bytes: int) -> None:
    """Try ``token``'s file (in the job folder, written already) becomes the ``overlay`` result;
    ``disk_bytes``: what the job's folder takes with it."""
    row = fenced(db, job_id, token)
    results = {**json.loads(row["results"]), "overlay": check_name(name)}
    db.execute(
        "UPDATE jobs SET overlay_state = 'ready', overlay_lease_until = NULL, results = :results, updated_at = :now,"
        " disk_bytes = :disk WHERE id = :id",
        {"results": json.dumps(results), "now": now, "id": job_id, "disk": disk_bytes},
    )


def set_failed(db: Connection, job_id: str, token: int, code: str, message: str, now: float) -> None:
    fenced(db, job_id, token)
    _set_failed(db, job_id, now, code, message)


def _set_failed(db: Connection, job_id: str, now: float, code: str, message: str) -> None:
    db.execute(
        "UPDATE jobs SET overlay_state = 'failed', overlay_error_code = :code, overlay_error_message = :message,"
        " overlay_lease_until = NULL, updated_at = :now,"
        " disk_bytes = disk_bytes - CASE WHEN overlay_state = 'pending' THEN overlay_bytes ELSE 0 END WHERE id = :id",
        {"code": code, "message": message, "now": now, "id": job_id},
    )


def expired(db: Connection) -> list[str]:
    """Succeeded jobs whose render is pending and held by no live lease (never claimed, or its
    worker stopped renewing; on the database's clock), oldest first."""
    now = db_now(db)
    rows = db.execute(
        "SELECT id FROM jobs WHERE state = 'succeeded' AND overlay_state = 'pending'"
        " AND (overlay_lease_until IS NULL OR overlay_lease_until <= :now) ORDER BY finished_at",
        {"now": now},
    ).fetchall()
    return [r["id"] for r in rows]
