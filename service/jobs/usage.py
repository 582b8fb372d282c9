"""Disk bytes per job: reserved at admission, counted per client, settled when the job ends.

The data folder's budget (`service.disk`) sees what is on disk now. A job accepted now writes
its results later, so admission must also count what accepted jobs have still to write, or ten
uploads that each fit would together fill the disk with their results. Each job row carries:

* ``disk_bytes``: what the job's folder takes or will take: at admission its input (an upload
  moved in) plus its expected results and overlay; once it has succeeded, what its folder holds;
  once it has failed or been cancelled, the input plus the part of the results written.
* ``reserved_bytes``: its expected results (JSON lines, NPZ, segments), of which a running job
  has written ``frames_done / frames_total``: the rest is still reserved while it is queued or
  running.
* ``overlay_bytes``: its expected overlay video, reserved while the overlay is pending.

An upload holds its bytes while it streams in (`hold_upload`, a row of ``upload_holds``, renewed
as it goes and lapsing ``until`` a time on the database's clock, so a crashed Ingress's hold
frees itself): uploads on every Ingress replica see each other before a byte is written. Its
hold ends in the transaction that creates its job (its bytes are on disk then) or when it is
refused.

Admission (`admit`) runs inside the store's job-creating transaction, which is serialised with
every other multi-row write (`service.jobs.db` ``lock_all``): two uploads admitted at once see
each other's reservation, so together they cannot take more than the room there is. The room
itself (free space and budget) is read from the file system just before; what landed on disk
already (this very upload) is in it. A hold is counted in full although part of its file is on
disk already: the error is on the safe side, and only while uploads stream.

The expected results are an estimate with a margin (`expected_result_bytes`), so a job's
reservation is nearly always above what it writes; a job that writes more is not stopped (its
disk errors hand it back to the queue, see `service.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from pipeline.errors import PoseError
from service.disk import RETRY_AFTER_S
from service.jobs.admission import check_capacity, check_client_jobs, client_jobs
from service.jobs.db import Connection
from service.jobs.leases import db_now

# One person of one frame in the published result: ~9.6 kB of JSON (461 floats written in full)
# plus ~1.9 kB of NPZ arrays; segments hold the same again until the result is published.
RESULT_BYTES_PER_PERSON = 2 * 11_600
# With vertices: 6890 x 3 float32 more per person, in segments and in result-vertices.npz.
VERTEX_BYTES_PER_PERSON = 2 * 6890 * 3 * 4
# The overlay (H.264, CRF 20, `pipeline.render.overlay`).
OVERLAY_BYTES_PER_PIXEL = 0.03  # about 10 Mbit/s at 1080p and 30 fps, twice what CRF 20 usually takes
FRAME_BYTES = 256  # a frame's own fields (index, time) and line

# What a running job has still to write of its reserved results, as a SQL expression on its row.
UNWRITTEN_SQL = (
    "CASE WHEN state = 'running' AND frames_total > 0 AND frames_done < frames_total"
    " THEN reserved_bytes * (frames_total - frames_done) / frames_total"
    " WHEN state = 'running' AND frames_total > 0 THEN 0 ELSE reserved_bytes END"
)
# A job that ends without its results keeps its input and what it wrote: the rest of its
# reservation, and its overlay's, leaves its ``disk_bytes`` (a SET clause of the ending UPDATE,
# which reads the row as it was).
SETTLE_UNFINISHED_SQL = (
    f"disk_bytes = disk_bytes - ({UNWRITTEN_SQL})"
    " - (CASE WHEN overlay_state = 'pending' THEN overlay_bytes ELSE 0 END)"
)


def expected_result_bytes(frames: int, *, people_per_frame: int, vertices: bool) -> int:
    """The results of ``frames`` frames with ``people_per_frame`` people each (an assumption:
    ``jobs.reserve_people_per_frame``)."""
    person = RESULT_BYTES_PER_PERSON + (VERTEX_BYTES_PER_PERSON if vertices else 0)
    return max(0, frames) * (FRAME_BYTES + people_per_frame * person)


def expected_overlay_bytes(frames: int, width: int, height: int) -> int:
    return int(max(0, frames) * width * height * OVERLAY_BYTES_PER_PIXEL)


@dataclass(frozen=True)
class Reservation:
    """The disk bytes a new job asks for, and the bounds admission checks them against.

    ``input_bytes``: its upload, on disk already, moving into its folder (0 for a media-folder
    file). ``result_bytes`` / ``overlay_bytes``: expected, reserved until written.
    ``client_max_bytes``: what all of the client's jobs may take (None: no bound of its own).
    ``room``: bytes the data folder may still take before any reservation (`DiskBudget.room`);
    None: not checked."""

    input_bytes: int = 0
    result_bytes: int = 0
    overlay_bytes: int = 0
    client_max_bytes: int | None = None
    room: Callable[[], int] | None = None
    upload_hold: str | None = None  # the hold its upload took while streaming (`hold_upload`), ended with the insert

    @property
    def total(self) -> int:
        return self.input_bytes + self.result_bytes + self.overlay_bytes

    @property
    def pending(self) -> int:
        """What the job has still to write."""
        return self.result_bytes + self.overlay_bytes

    def with_input(self, upload: Path | None) -> Reservation:
        """The same, counting ``upload`` (a file moving into the job's folder) as its input."""
        return self if upload is None else replace(self, input_bytes=upload.stat().st_size)

    def columns(self) -> dict[str, int]:
        """The job row's byte columns at admission."""
        return {"disk": self.total, "reserved": self.result_bytes, "overlay_bytes": self.overlay_bytes}


def create_table(db: Connection) -> None:
    """The upload holds (idempotent; DOUBLE PRECISION is REAL to SQLite)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS upload_holds (id TEXT PRIMARY KEY, bytes BIGINT NOT NULL, until DOUBLE PRECISION NOT NULL)"
    )


def reserved_bytes(db: Connection, except_hold: str | None = None) -> int:
    """Bytes promised and not yet on disk: unwritten results of queued and running jobs, pending
    overlays, and the live holds of uploads streaming in (but ``except_hold``)."""
    row = db.execute(
        f"SELECT COALESCE(SUM(CASE WHEN state IN ('queued', 'running') THEN {UNWRITTEN_SQL} ELSE 0 END"
        " + CASE WHEN overlay_state = 'pending' AND state IN ('queued', 'running', 'succeeded')"
        " THEN overlay_bytes ELSE 0 END), 0) FROM jobs"
    ).fetchone()
    held = db.execute(
        "SELECT COALESCE(SUM(bytes), 0) FROM upload_holds WHERE until > :now AND id <> :hold",
        {"now": db_now(db), "hold": except_hold or ""},
    ).fetchone()
    return (int(row[0]) if row is not None else 0) + (int(held[0]) if held is not None else 0)


def hold_upload(db: Connection, hold: str, nbytes: int, room: int, hold_s: float) -> None:
    """Hold ``nbytes`` for the upload ``hold`` (taken again: its new size and time) for
    ``hold_s`` seconds; ``storage_full`` (507) when they do not fit in ``room`` less what is
    reserved. The caller's transaction must be serialised with admission (``lock_all``)."""
    check_room(db, room, nbytes, except_hold=hold)
    end_hold(db, hold)
    db.execute(
        "INSERT INTO upload_holds (id, bytes, until) VALUES (:id, :bytes, :until)",
        {"id": hold, "bytes": nbytes, "until": db_now(db) + hold_s},
    )


def end_hold(db: Connection, hold: str) -> None:
    db.execute("DELETE FROM upload_holds WHERE id = :id OR until < :now", {"id": hold, "now": db_now(db) - 3600})


def client_bytes(db: Connection, client: str) -> int:
    """What ``client``'s jobs take or will take on disk (until they are deleted or expire)."""
    row = db.execute("SELECT COALESCE(SUM(disk_bytes), 0) FROM jobs WHERE client = :client", {"client": client}).fetchone()
    return int(row[0]) if row is not None else 0


@dataclass(frozen=True)
class ClientBytes:
    """A client's bytes against its limit, read once for an upload that streams in."""

    client: str
    used: int
    limit: int

    def check(self, incoming: int) -> None:
        """``client_storage_limit`` (507, with the client's figures) when ``incoming`` more bytes
        would take the client's jobs past its limit."""
        if self.used + incoming <= self.limit:
            return
        raise PoseError(
            "client_storage_limit",
            f"client {self.client!r} has jobs taking {self.used} bytes, this request needs {incoming} more, the "
            f"limit per client is {self.limit} bytes (jobs.max_bytes_per_client); delete finished jobs to make room",
            details={
                "retry_after": RETRY_AFTER_S, "client": self.client, "client_bytes": self.used,
                "incoming_bytes": incoming, "max_bytes_per_client": self.limit,
            },
        )


@dataclass(frozen=True)
class Usage:
    """One client's jobs queued or running, and the bytes its jobs take."""

    client: str
    client_jobs: int
    client_bytes: int

    def client_room(self, limit: int | None) -> ClientBytes | None:
        """The client's bytes against ``limit`` (None: no bound of its own)."""
        return None if limit is None else ClientBytes(self.client, self.client_bytes, limit)


def read_usage(db: Connection, client: str) -> Usage:
    return Usage(client, client_jobs(db, client), client_bytes(db, client))


def check_client_bytes(db: Connection, client: str, incoming: int, limit: int | None) -> None:
    """`ClientBytes.check` on the client's bytes now (``limit`` None: no bound of its own)."""
    if limit is not None:
        ClientBytes(client, client_bytes(db, client), limit).check(incoming)


def check_room(db: Connection, room: int, incoming: int, except_hold: str | None = None) -> None:
    """``storage_full`` (507) when ``incoming`` bytes do not fit in ``room`` less what is
    reserved (`reserved_bytes`)."""
    reserved = reserved_bytes(db, except_hold)
    if incoming <= room - reserved:
        return
    left = max(0, room - reserved)
    raise PoseError(
        "storage_full",
        f"the data folder has room for {left} more bytes once accepted jobs have written their results "
        f"({reserved} bytes reserved), this job needs {incoming}; retry when jobs end or are deleted",
        details={"retry_after": RETRY_AFTER_S, "incoming_bytes": incoming, "room_bytes": left, "reserved_bytes": reserved},
    )


def admit(
    db: Connection,
    client: str,
    client_limit: int | None,
    reservation: Reservation,
    room: int | None,
    *,
    max_active: int,
    max_queued: int,
) -> None:
    """Every bound a new job must fit, in one transaction: the client's jobs and bytes, the
    queue, and the disk room left after reservations (``room``: read just before)."""
    check_client_jobs(db, client, client_limit, max_active=max_active)
    check_client_bytes(db, client, reservation.total, reservation.client_max_bytes)
    check_capacity(db, max_active=max_active, max_queued=max_queued)
    if room is not None:
        check_room(db, room, reservation.pending, except_hold=reservation.upload_hold)
