"""The two databases a `service.jobs.JobStore` keeps its jobs table in.

* SQLite (the default, one machine): a file beside the job folders, WAL journal, full sync.
  Every write transaction is ``BEGIN IMMEDIATE``, so one writer at a time across processes.
  It is node-local: SQLite's locking does not work over network file systems.
* PostgreSQL (a cluster): ``job_store: postgresql://...`` (psycopg 3). Claims lock rows with
  ``FOR UPDATE SKIP LOCKED``, so many workers claim different jobs at once; a write that checks
  a job's row first locks that row (``FOR UPDATE``); the few writes that count several rows
  (admission against the queue bound, recovery, retention) take one transaction-level advisory
  lock.

Both speak the same SQL as `JobStore` writes it (``?`` placeholders, portable statements); the
adapter translates the little that differs and hands rows that read by name and by position.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

from pipeline.errors import PoseError
from service.auth import DEFAULT_CLIENT

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 3: jobs belong to a client; idempotency keys are unique per client
_ADVISORY_KEY = 0x706F7365  # "pose": serialises multi-row writes in PostgreSQL

_COLUMNS = """
    id TEXT PRIMARY KEY,
    seq BIGINT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER,
    timings TEXT NOT NULL DEFAULT '{{}}',
    error_code TEXT,
    error_message TEXT,
    input_path TEXT,
    options TEXT NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT,
    client TEXT NOT NULL DEFAULT '{client}',
    callback_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    results TEXT NOT NULL DEFAULT '{{}}',
    checkpoint TEXT,
    lease_until {real},
    crashes INTEGER NOT NULL DEFAULT 0,
    progress_at {real},
    overlay_state TEXT,
    overlay_error_code TEXT,
    overlay_error_message TEXT,
    overlay_tries INTEGER NOT NULL DEFAULT 0,
    overlay_lease_until {real}
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_client ON jobs (client, created_at)",
    # One job per key and client: two clients may use the same key (NULL keys never collide).
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_key ON jobs (client, idempotency_key)",
)
# Columns added after the first schema, for databases created before them. Jobs made before
# clients existed belong to the default client (the one the single bearer token stands for).
_ADDED_COLUMNS = (
    ("checkpoint", "TEXT"),
    ("lease_until", "{real}"),
    ("seq", "BIGINT"),
    ("client", f"TEXT NOT NULL DEFAULT '{DEFAULT_CLIENT}'"),
    ("crashes", "INTEGER NOT NULL DEFAULT 0"),
    ("progress_at", "{real}"),
    # the overlay video of a render=true job: an artifact with its own state (`service.jobs.overlays`)
    ("overlay_state", "TEXT"),
    ("overlay_error_code", "TEXT"),
    ("overlay_error_message", "TEXT"),
    ("overlay_tries", "INTEGER NOT NULL DEFAULT 0"),
    ("overlay_lease_until", "{real}"),
)
# Facts about the store itself, created with the schema: ``store_id`` is this database's own
# random id, written into every job folder it creates, so cleanup can tell its folders apart
# from another store's on the same storage (`service.jobs.cleanup`).
_META = "CREATE TABLE IF NOT EXISTS pose_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
_META_STORE_ID = "INSERT INTO pose_meta (name, value) VALUES ('store_id', ?) ON CONFLICT (name) DO NOTHING"
_READ_STORE_ID = "SELECT value FROM pose_meta WHERE name = 'store_id'"
# The database's clock in unix seconds: leases are granted and judged on it, never on the clock
# of the node that writes or reads them (nodes' clocks drift apart; the database is one).
_SQLITE_CLOCK = "((julianday('now') - 2440587.5) * 86400.0)"  # unixepoch('subsec') needs SQLite 3.42
_PG_CLOCK = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"
_COLUMN_NAMES = tuple(line.split()[0] for line in _COLUMNS.strip().splitlines())


def _columns(real: str) -> str:
    return _COLUMNS.format(real=real, client=DEFAULT_CLIENT)


class Row:
    """One result row: ``row["state"]`` or ``row[0]``; iterates over its values."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names = names
        self._values = tuple(values)

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key] if isinstance(key, int) else self._values[self._names[key]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor(Protocol):
    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...


class Connection(Protocol):
    """What `JobStore` runs its statements on, inside `Database.write` or `Database.read`."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def lock_all(self) -> None:
        """Serialise this transaction with every other one that calls it (multi-row checks)."""

    @property
    def for_update(self) -> str:
        """Suffix that locks the selected rows for this transaction ('' where writes are serial)."""

    @property
    def skip_locked(self) -> str:
        """Suffix that locks the selected rows and skips rows another transaction holds."""

    @property
    def clock(self) -> str:
        """SQL expression of the database's clock, in unix seconds (leases are judged on it)."""


class Database(Protocol):
    url: str
    node_local: bool  # True: only processes on this machine may use it
    store_id: str  # the database's own random id (``pose_meta``), the same for every process using it

    def write(self) -> contextlib.AbstractContextManager[Connection]: ...

    def read(self) -> contextlib.AbstractContextManager[Connection]: ...

    def close(self) -> None: ...


def open_database(url: str | None, data_dir: Path) -> Database:
    """``url``: None (``<data_dir>/jobs.sqlite3``), ``sqlite:///abs/path.sqlite3``, or ``postgresql://...``."""
    if not url:
        return SqliteDatabase(data_dir / "jobs.sqlite3")
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url.removeprefix("sqlite://")))
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise PoseError(
        "job_store_invalid", f"expected job_store to be sqlite:///PATH or postgresql://..., got scheme {scheme!r}", status=500
    )


def redact(url: str) -> str:
    """The URL without its password (for logs and /v1/info)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


# -- SQLite -------------------------------------------------------------------------------------


class _SqliteConn:
    for_update = ""  # BEGIN IMMEDIATE already holds the database's write lock
    skip_locked = ""
    clock = _SQLITE_CLOCK

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, tuple(params))

    def lock_all(self) -> None:
        pass


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row({d[0]: i for i, d in enumerate(cursor.description)}, values)


class SqliteDatabase:
    node_local = True
    store_id: str

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.row_factory = _sqlite_row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("BEGIN IMMEDIATE")  # one process creates or migrates the table
            try:
                self._migrate()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"job database schema {version} is newer than this code ({SCHEMA_VERSION})")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({_columns('REAL')})")
        have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind.format(real='REAL')}")
        if self._key_unique_alone():
            self._rebuild()
        self._db.execute("UPDATE jobs SET seq = rowid WHERE seq IS NULL")
        for statement in _INDEXES:
            self._db.execute(statement)
        self._db.execute(_META)
        self._db.execute(_META_STORE_ID, (uuid.uuid4().hex,))
        self.store_id = self._db.execute(_READ_STORE_ID).fetchone()[0]
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _key_unique_alone(self) -> bool:
        """Whether the table still has schema 2's ``idempotency_key UNIQUE`` (one key, all clients)."""
        for index in self._db.execute("PRAGMA index_list(jobs)").fetchall():
            if index[3] == "u":  # made by a UNIQUE column constraint
                columns = [c[2] for c in self._db.execute(f"PRAGMA index_info('{index[1]}')").fetchall()]
                if columns == ["idempotency_key"]:
                    return True
        return False

    def _rebuild(self) -> None:
        """SQLite cannot drop a column constraint: copy the rows into a table of the current
        schema and put it in the old one's place (inside the caller's transaction)."""
        names = ", ".join(_COLUMN_NAMES)
        self._db.execute("DROP TABLE IF EXISTS jobs_migrating")
        self._db.execute(f"CREATE TABLE jobs_migrating ({_columns('REAL')})")
        self._db.execute(f"INSERT INTO jobs_migrating ({names}) SELECT {names} FROM jobs")
        self._db.execute("DROP TABLE jobs")
        self._db.execute("ALTER TABLE jobs_migrating RENAME TO jobs")
        log.info("job database %s migrated to schema %d (idempotency keys per client)", self.path, SCHEMA_VERSION)

    @contextlib.contextmanager
    def write(self) -> Iterator[_SqliteConn]:
        """One write transaction, taken before reading so check-then-write is atomic across processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[_SqliteConn]:
        with self._lock:
            yield _SqliteConn(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


class _PgConn:
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    clock = _PG_CLOCK

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), tuple(params))

    def lock_all(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))


def _pg_row_factory(cursor: Any) -> Any:
    names = {d.name: i for i, d in enumerate(cursor.description or [])}

    def make(values: Sequence[Any]) -> Row:
        return Row(names, values)

    return make


class PostgresDatabase:
    node_local = False

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a dependency
            raise PoseError("job_store_unavailable", f"PostgreSQL job store needs psycopg 3: {exc}", status=503) from exc
        self.url = url
        self._psycopg = psycopg
        self._timeout = int(connect_timeout_s)
        self._lock = threading.RLock()
        self._conn = self._connect()
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            self._conn.execute("CREATE TABLE IF NOT EXISTS pose_schema (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT MAX(version) FROM pose_schema").fetchone()
            if row[0] is not None and row[0] > SCHEMA_VERSION:
                raise RuntimeError(f"job database schema {row[0]} is newer than this code ({SCHEMA_VERSION})")
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS jobs ({_columns('DOUBLE PRECISION')})")
            have = {
                r[0]
                for r in self._conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'jobs'"
                ).fetchall()
            }
            for name, kind in _ADDED_COLUMNS:  # checked first: ALTER TABLE locks the table even when it adds nothing
                if name not in have:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind.format(real='DOUBLE PRECISION')}")
            # schema 2's column constraint, by the name PostgreSQL gave it: one key across all clients
            old_unique = self._conn.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND conname = 'jobs_idempotency_key_key'"
            ).fetchone()
            if old_unique is not None:
                self._conn.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key_key")
            for statement in _INDEXES:
                self._conn.execute(statement)
            self._conn.execute(_META)
            self._conn.execute(_META_STORE_ID.replace("?", "%s"), (uuid.uuid4().hex,))
            self.store_id: str = self._conn.execute(_READ_STORE_ID).fetchone()[0]
            if row[0] is None:
                self._conn.execute("INSERT INTO pose_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] < SCHEMA_VERSION:
                self._conn.execute("UPDATE pose_schema SET version = %s", (SCHEMA_VERSION,))

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=self._timeout, row_factory=_pg_row_factory)
        except self._psycopg.Error as exc:
            raise PoseError(
                "job_store_unavailable", f"cannot reach the job store at {redact(self.url)}: {exc}".strip(), status=503
            ) from exc

    def _live(self) -> Any:
        """The connection, opened again if the server dropped it (restart, failover)."""
        if self._conn.closed or self._conn.broken:
            log.warning("job store connection lost; reconnecting to %s", redact(self.url))
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def write(self) -> Iterator[_PgConn]:
        with self._lock:
            conn = self._live()
            with conn.transaction():
                yield _PgConn(conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[_PgConn]:
        with self._lock:
            yield _PgConn(self._live())

    def close(self) -> None:
        with self._lock:
            self._conn.close()
