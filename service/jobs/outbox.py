"""The callback outbox: a job's end is told to its callback URL at least once, whoever runs it.

When a job with a callback URL ends (succeeded, failed, cancelled), an event row is written in
the same transaction as the state change: the event's id (stable, sent as ``X-Pose-Event-Id``
so a receiver can drop a repeat), its name (``job.<state>``) and the body as it will be sent.
Any video worker delivers due events (`claim_due`): claiming one holds it for ``hold_s``; a
delivered event is marked so; a failed delivery is due again after a back-off that doubles up
to `MAX_DELAY_S`, up to `MAX_DELIVERIES` times. A worker that dies between claiming and
marking leaves the event to be claimed again once its hold runs out, so an event can arrive
twice (with the same id) but is never lost with the process that was sending it.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.jobs.db import Connection
from service.jobs.rows import job_from_row

log = logging.getLogger(__name__)

EVENT_HEADER = "X-Pose-Event-Id"
MAX_DELIVERIES = 8  # deliveries of one event (each with the callback's own quick tries)
FIRST_DELAY_S = 15.0  # then 30 s, 60 s, ... : about 3 hours from the first to the last delivery
MAX_DELAY_S = 3600.0
TERMINAL = ("succeeded", "failed", "cancelled")


def create_table(db: Connection) -> None:
    """The outbox table and its index (idempotent; DOUBLE PRECISION is REAL to SQLite)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS callback_outbox ("
        " id TEXT PRIMARY KEY, job_id TEXT NOT NULL, client TEXT NOT NULL, url TEXT NOT NULL, event TEXT NOT NULL,"
        " body TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, next_at DOUBLE PRECISION NOT NULL,"
        " deliveries INTEGER NOT NULL DEFAULT 0, delivered_at DOUBLE PRECISION, last_error TEXT)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS callback_outbox_due ON callback_outbox (delivered_at, next_at)")


@dataclass(frozen=True)
class Event:
    """One claimed event, to be POSTed to ``url``."""

    id: str
    job_id: str
    client: str
    url: str
    event: str
    body: bytes
    deliveries: int  # deliveries tried before this one


def emit(db: Connection, job: Any, now: float, name: str | None = None) -> str | None:
    """Record the event of ``job`` (a `service.jobs.Job` just moved to an end state, inside
    the transaction that moved it; ``name``: another event of it, e.g. ``job.overlay_ready``)
    when it has a callback URL; the event's id."""
    if not job.callback_url or (name is None and job.state not in TERMINAL):
        return None
    status = job.to_dict()
    for private in ("callback_url", "idempotency_key"):  # the receiver knows them; a log of it need not
        status.pop(private, None)
    event_id = uuid.uuid4().hex
    name = name or "job." + job.state
    body = json.dumps({"event": name, "event_id": event_id, "job": status}, separators=(",", ":"))
    db.execute(
        "INSERT INTO callback_outbox (id, job_id, client, url, event, body, created_at, next_at)"
        " VALUES (:id, :job_id, :client, :url, :event, :body, :now, :now)",
        {"id": event_id, "job_id": job.id, "client": job.client, "url": job.callback_url, "event": name, "body": body,
         "now": now},
    )
    return event_id


def emit_ended(db: Connection, job_ids: list[str], now: float, jobs_dir: Path, name: str | None = None) -> None:
    """`emit` for each of ``job_ids`` (just ended, or ``name``: their overlay), read back inside
    the transaction that changed them."""
    for job_id in job_ids:
        row = db.execute("SELECT * FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
        if row is not None:
            emit(db, job_from_row(row, jobs_dir), now, name)


def claim_due(db: Connection, clock: float, hold_s: float, limit: int) -> list[Event]:
    """Up to ``limit`` undelivered events that are due on the database's clock, held for
    ``hold_s`` (another worker skips them meanwhile)."""
    rows = db.execute(
        "SELECT id, job_id, client, url, event, body, deliveries FROM callback_outbox"
        " WHERE delivered_at IS NULL AND next_at <= :clock AND deliveries < :max ORDER BY next_at LIMIT :limit"
        + db.skip_locked,
        {"clock": clock, "max": MAX_DELIVERIES, "limit": limit},
    ).fetchall()
    for row in rows:
        db.execute("UPDATE callback_outbox SET next_at = :at WHERE id = :id", {"at": clock + hold_s, "id": row["id"]})
    return [
        Event(r["id"], r["job_id"], r["client"], r["url"], r["event"], str(r["body"]).encode(), int(r["deliveries"]))
        for r in rows
    ]


def mark_delivered(db: Connection, event_id: str, clock: float) -> None:
    db.execute(
        "UPDATE callback_outbox SET delivered_at = :clock, deliveries = deliveries + 1, last_error = NULL WHERE id = :id",
        {"clock": clock, "id": event_id},
    )


def mark_failed(db: Connection, event_id: str, clock: float, error: str) -> bool:
    """A delivery failed: due again after the back-off; False once it has had `MAX_DELIVERIES`."""
    row = db.execute("SELECT deliveries FROM callback_outbox WHERE id = :id", {"id": event_id}).fetchone()
    deliveries = (int(row["deliveries"]) if row is not None else MAX_DELIVERIES - 1) + 1
    delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (deliveries - 1))
    db.execute(
        "UPDATE callback_outbox SET deliveries = :deliveries, next_at = :at, last_error = :error WHERE id = :id",
        {"deliveries": deliveries, "at": clock + delay, "error": error[:500], "id": event_id},
    )
    return deliveries < MAX_DELIVERIES


def purge(db: Connection, before: float) -> int:
    """Forget events delivered or given up before ``before`` (the jobs' retention)."""
    cur = db.execute(
        "DELETE FROM callback_outbox WHERE created_at < :before AND (delivered_at IS NOT NULL OR deliveries >= :max)",
        {"before": before, "max": MAX_DELIVERIES},
    )
    return int(getattr(cur, "rowcount", 0) or 0)
