"""The two databases a `service.jobs.JobStore` keeps its jobs table in, through SQLAlchemy Core.

* SQLite (the default, one machine): a file beside the job folders, WAL journal, full sync, a
  busy wait of ``busy_timeout_s``. Every write transaction is ``BEGIN IMMEDIATE``, so one writer
  at a time across processes. It is node-local: SQLite's locking does not work over network
  file systems.
* PostgreSQL (a cluster): ``job_store: postgresql://...`` (driver psycopg 3). Claims lock rows
  with ``FOR UPDATE SKIP LOCKED``, so many workers claim different jobs at once; a write that
  checks a job's row first locks that row (``FOR UPDATE``); the few writes that count several
  rows (admission against the queue bound, recovery, retention) take one transaction-level
  advisory lock.

Each store has one Engine with a small connection pool: connections are checked before use
(``pool_pre_ping``) and replaced after ``pool_recycle`` seconds, and a connection the server
dropped (restart, failover, ``pg_terminate_backend``) is discarded with every other connection of
the pool. PostgreSQL connections carry a connect timeout, TCP keepalives (a half-open connection
is noticed in about a minute instead of hanging) and a statement timeout.

Statements are SQLAlchemy ``text()`` with named ``:parameters``; the little SQL that differs
between the two (row locks, the advisory lock, the database's clock) is a property of the
`Connection`. `is_transient` is the one place that tells a passing fault (connection lost,
serialization failure, deadlock, server starting up, SQLite busy) from a permanent one;
`retry_transient` retries the first kind with back-off and turns it into 503
``job_store_unavailable`` once its time is up.

Schema changes are versioned steps in code (`MIGRATIONS`), not Alembic. At every store open,
inside one locked transaction (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock), the steps
newer than the database's version run in order, each idempotent, and the version reached is
recorded (SQLite ``PRAGMA user_version``, PostgreSQL table ``pose_schema``, where earlier
releases recorded it, so their databases migrate in place). Why not Alembic: the steps differ
per dialect where the databases do (SQLite cannot drop a column constraint and rebuilds the
table), the databases of earlier releases carry no Alembic revision to start from, and a
handful of steps do not pay for a migrations folder, an env script and a second runtime tool.
Columns are declared once, in `JOB_COLUMNS`: a fresh table is created with all of them and a
column missing from an older table is added at open, so a new nullable or defaulted column is
one line there and needs no step; a step is for what ALTER TABLE ADD COLUMN cannot do.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, ParamSpec, Protocol, Sequence, TypeVar
from urllib.parse import urlsplit

from pipeline.errors import PoseError
from service.auth import DEFAULT_CLIENT

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

SCHEMA_VERSION = 3  # 3: jobs belong to a client; idempotency keys are unique per client
_ADVISORY_KEY = 0x706F7365  # "pose": serialises multi-row writes in PostgreSQL
APPLICATION_NAME = "pose-service"  # PostgreSQL's application_name of the store's connections

# The jobs table, one column a line: (name, type). ``{real}`` is the dialect's double type.
# A column added to an existing table must be nullable or have a DEFAULT (ALTER TABLE ADD).
# Jobs made before clients existed belong to the default client (the one the single bearer
# token stands for).
JOB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT PRIMARY KEY"),
    ("seq", "BIGINT"),
    ("kind", "TEXT NOT NULL"),
    ("state", "TEXT NOT NULL"),
    ("created_at", "{real} NOT NULL"),
    ("updated_at", "{real} NOT NULL"),
    ("started_at", "{real}"),
    ("finished_at", "{real}"),
    ("frames_done", "INTEGER NOT NULL DEFAULT 0"),
    ("frames_total", "INTEGER"),
    ("timings", "TEXT NOT NULL DEFAULT '{{}}'"),
    ("error_code", "TEXT"),
    ("error_message", "TEXT"),
    ("input_path", "TEXT"),
    ("options", "TEXT NOT NULL DEFAULT '{{}}'"),
    ("idempotency_key", "TEXT"),
    ("client", f"TEXT NOT NULL DEFAULT '{DEFAULT_CLIENT}'"),
    ("callback_url", "TEXT"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
    ("owner", "TEXT"),
    ("results", "TEXT NOT NULL DEFAULT '{{}}'"),
    ("checkpoint", "TEXT"),
    ("lease_until", "{real}"),
    ("crashes", "INTEGER NOT NULL DEFAULT 0"),
    ("progress_at", "{real}"),
    # the overlay video of a render=true job: an artifact with its own state (`service.jobs.overlays`)
    ("overlay_state", "TEXT"),
    ("overlay_error_code", "TEXT"),
    ("overlay_error_message", "TEXT"),
    ("overlay_tries", "INTEGER NOT NULL DEFAULT 0"),
    ("overlay_lease_until", "{real}"),
    # disk bytes the job takes, and reserves while it writes (`service.jobs.usage`)
    ("disk_bytes", "BIGINT NOT NULL DEFAULT 0"),
    ("reserved_bytes", "BIGINT NOT NULL DEFAULT 0"),
    ("overlay_bytes", "BIGINT NOT NULL DEFAULT 0"),
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_client ON jobs (client, created_at)",
    # One job per key and client: two clients may use the same key (NULL keys never collide).
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_key ON jobs (client, idempotency_key)",
)
# Facts about the store itself: ``store_id`` is this database's own random id, written into
# every job folder it creates, so cleanup can tell its folders apart from another store's on the
# same storage (`service.jobs.cleanup`).
_META = "CREATE TABLE IF NOT EXISTS pose_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
_META_STORE_ID = "INSERT INTO pose_meta (name, value) VALUES ('store_id', :id) ON CONFLICT (name) DO NOTHING"
_READ_STORE_ID = "SELECT value FROM pose_meta WHERE name = 'store_id'"
# The database's clock in unix seconds: leases are granted and judged on it, never on the clock
# of the node that writes or reads them (nodes' clocks drift apart; the database is one).
_SQLITE_CLOCK = "((julianday('now') - 2440587.5) * 86400.0)"  # unixepoch('subsec') needs SQLite 3.42
_PG_CLOCK = "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"


def _columns(real: str) -> str:
    return ", ".join(f"{name} {kind.format(real=real)}" for name, kind in JOB_COLUMNS)


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


class Cursor:
    """The rows of one statement, as `Row`s."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def _names(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self._result.keys())}

    def fetchone(self) -> Row | None:
        values = self._result.fetchone()
        return None if values is None else Row(self._names(), values)

    @property
    def rowcount(self) -> int:
        """Rows an UPDATE or DELETE changed."""
        return int(self._result.rowcount)

    def fetchall(self) -> list[Row]:
        names = self._names()
        return [Row(names, values) for values in self._result.fetchall()]


class Connection:
    """What `JobStore` runs its statements on, inside `Database.write` or `Database.read`:
    ``text()`` statements with named parameters, and the SQL that differs per dialect."""

    def __init__(self, conn: Any, postgresql: bool) -> None:
        self._conn = conn
        self._pg = postgresql

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        from sqlalchemy import text

        return Cursor(self._conn.execute(text(sql), dict(params or {})))

    def lock_all(self) -> None:
        """Serialise this transaction with every other one that calls it (multi-row checks);
        SQLite's ``BEGIN IMMEDIATE`` already serialises every write."""
        if self._pg:
            self.execute("SELECT pg_advisory_xact_lock(:key)", {"key": _ADVISORY_KEY})

    @property
    def for_update(self) -> str:
        """Suffix that locks the selected rows for this transaction ('' where writes are serial)."""
        return " FOR UPDATE" if self._pg else ""

    @property
    def skip_locked(self) -> str:
        """Suffix that locks the selected rows and skips rows another transaction holds."""
        return " FOR UPDATE SKIP LOCKED" if self._pg else ""

    @property
    def clock(self) -> str:
        """SQL expression of the database's clock, in unix seconds (leases are judged on it)."""
        return _PG_CLOCK if self._pg else _SQLITE_CLOCK


@dataclass(frozen=True)
class DatabaseSettings:
    """How the store talks to its database."""

    pool_size: int = 4  # connections kept open per process
    max_overflow: int = 4  # more, opened for a burst and closed after
    pool_timeout_s: float = 10.0  # wait for a free connection before the call fails (transient)
    pool_recycle_s: float = 1800.0  # replace connections older than this (proxies drop idle ones)
    connect_timeout_s: int = 10  # PostgreSQL: give up connecting after this
    statement_timeout_s: float = 30.0  # PostgreSQL: cancel a statement running longer (a stuck lock)
    keepalive_idle_s: int = 30  # PostgreSQL: TCP keepalive probes after this much silence ...
    keepalive_interval_s: int = 10  # ... every this often ...
    keepalive_count: int = 3  # ... and the connection is dead after this many unanswered
    busy_timeout_s: float = 30.0  # SQLite: wait this long for another process's write lock


# -- transient errors -------------------------------------------------------------------------

# SQLSTATEs of faults that pass: connection exceptions (class 08), serialization failure,
# deadlock, statement timeout / cancel, administrator shutdown, crash shutdown, the server
# starting up, too many connections.
_TRANSIENT_SQLSTATES = ("40001", "40P01", "57014", "57P01", "57P02", "57P03", "53300")
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` from a store call is a passing fault of the database or the way to it, so
    the same call may succeed if tried again: the connection was lost or refused, the server is
    starting up or shutting down, a serialization failure or deadlock, a statement timeout, no
    free connection in the pool, SQLite's write lock held too long by another process."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, PoseError):
        return exc.code == "job_store_unavailable"
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig: BaseException | None = exc.orig
    else:
        orig = exc
    if isinstance(orig, sqlite3.OperationalError):
        return any(text in str(orig).lower() for text in _SQLITE_TRANSIENT)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(orig, psycopg.Error):
        state = orig.sqlstate
        if state is None:  # raised by the client: the connection broke or could not be made
            return isinstance(orig, psycopg.OperationalError)
        return state.startswith("08") or state in _TRANSIENT_SQLSTATES
    return False


def unavailable(url: str, exc: BaseException, waited_s: float) -> PoseError:
    """503 ``job_store_unavailable`` for a store that stayed unreachable for ``waited_s``."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PoseError(
        "job_store_unavailable",
        f"the job store at {redact(url)} did not answer for {waited_s:.1f} s: {cause}",
        status=503,
        details={"retry_after": 5},
    )


def permanent_error(exc: BaseException) -> PoseError | None:
    """A permanent database error as ``job_store_error`` (500) with its cause; None for others."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and not is_transient(exc):
        cause = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        return PoseError("job_store_error", f"the job store refused a statement: {type(exc.orig).__name__}: {cause}",
                         status=500)
    return None


_retrying = threading.local()


def retry_transient(fn: Callable[[], T], *, url: str, budget_s: float, what: str) -> T:
    """``fn()``, tried again with back-off while it fails with a transient error (`is_transient`)
    for up to ``budget_s`` seconds; then 503 ``job_store_unavailable``. A permanent error is
    raised at once. A call inside another one's retry runs once: the outer call retries."""
    if getattr(_retrying, "active", False):
        return fn()
    started = time.monotonic()
    delay = 0.05
    _retrying.active = True
    try:
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                waited = time.monotonic() - started
                if waited + delay > budget_s:
                    raise unavailable(url, exc, waited) from exc
                log.warning("job store: %s failed (%s); retrying in %.2f s", what, _first_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0, max(0.05, budget_s / 4))
    finally:
        _retrying.active = False


class _Retrying(Protocol):
    url: str
    retry_s: float


def retried(method: Callable[P, T]) -> Callable[P, T]:
    """A method of an object with ``url`` and ``retry_s`` (the job store), retried while the
    database has a transient fault for up to its ``retry_s`` (`retry_transient`); then 503
    ``job_store_unavailable``. Each try is a whole transaction: a failed one was rolled back."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        owner: _Retrying = args[0]  # type: ignore[assignment]
        return retry_transient(lambda: method(*args, **kwargs), url=owner.url, budget_s=owner.retry_s, what=method.__name__)

    return call


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the database -------------------------------------------------------------------------------


class Database(Protocol):
    url: str
    node_local: bool  # True: only processes on this machine may use it
    store_id: str  # the database's own random id (``pose_meta``), the same for every process using it

    def write(self) -> contextlib.AbstractContextManager[Connection]: ...

    def read(self) -> contextlib.AbstractContextManager[Connection]: ...

    def close(self) -> None: ...


def open_database(url: str | None, data_dir: Path, settings: DatabaseSettings | None = None) -> Database:
    """``url``: None (``<data_dir>/jobs.sqlite3``), ``sqlite:///abs/path.sqlite3``, or ``postgresql://...``."""
    settings = settings or DatabaseSettings()
    if not url:
        return SqliteDatabase(data_dir / "jobs.sqlite3", settings)
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url.removeprefix("sqlite://")), settings)
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return PostgresDatabase(url, settings)
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


class _EngineDatabase:
    """One Engine, its transactions, and the schema steps run when it opens."""

    url: str
    node_local: bool
    store_id: str
    _postgresql: bool

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``, taken before reading, so
        check-then-write is atomic across processes)."""
        with self._engine.connect().execution_options(pose_write=True) as conn, conn.begin():
            yield Connection(conn, self._postgresql)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Statements that only read. PostgreSQL runs each on its own (autocommit: no BEGIN and
        COMMIT round trips); SQLite reads in one deferred transaction, a consistent snapshot."""
        conn = self._engine.connect()
        if self._postgresql:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn, conn.begin():
            yield Connection(conn, self._postgresql)

    def close(self) -> None:
        self._engine.dispose()

    def _open(self) -> None:
        """Bring the schema to `SCHEMA_VERSION` (one process at a time) and read the store id."""
        with self.write() as db:
            db.lock_all()
            version = self._version(db)
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"job database schema {version} is newer than this code ({SCHEMA_VERSION})")
            real = "DOUBLE PRECISION" if self._postgresql else "REAL"
            db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({_columns(real)})")
            have = self._column_names(db)
            for name, kind in JOB_COLUMNS:  # checked first: ALTER TABLE locks the table even when it adds nothing
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind.format(real=real)}")
            for step in MIGRATIONS:
                if step.version > version:
                    step.run(db, self._postgresql)
                    log.info("job database %s: schema step %d (%s) done", redact(self.url), step.version, step.what)
            for statement in _INDEXES:
                db.execute(statement)
            db.execute(_META)
            db.execute(_META_STORE_ID, {"id": uuid.uuid4().hex})
            self.store_id = db.execute(_READ_STORE_ID).fetchone()[0]  # type: ignore[index]
            if version < SCHEMA_VERSION:
                self._set_version(db, version)

    def _version(self, db: Connection) -> int:
        raise NotImplementedError

    def _set_version(self, db: Connection, old: int) -> None:
        raise NotImplementedError

    def _column_names(self, db: Connection) -> set[str]:
        raise NotImplementedError


# -- schema steps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema step: run once, in version order, by the first store that opens a database
    older than ``version``; idempotent, so a step interrupted before its version was recorded
    runs again harmlessly. Columns are not steps (`JOB_COLUMNS`)."""

    version: int
    what: str
    run: Callable[[Connection, bool], None]


def _number_jobs(db: Connection, postgresql: bool) -> None:
    """Schema 2: jobs of the first schema get sequence numbers (the order of creation)."""
    if postgresql:
        db.execute(
            "UPDATE jobs SET seq = numbered.n FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY created_at, id) AS n"
            " FROM jobs) AS numbered WHERE jobs.id = numbered.id AND jobs.seq IS NULL"
        )
    else:
        db.execute("UPDATE jobs SET seq = rowid WHERE seq IS NULL")


def _keys_per_client(db: Connection, postgresql: bool) -> None:
    """Schema 3: idempotency keys are unique per client (`_INDEXES`), not across all clients:
    schema 2's ``idempotency_key UNIQUE`` goes."""
    if postgresql:  # the column constraint, by the name PostgreSQL gave it
        db.execute("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_idempotency_key_key")
        return
    for index in db.execute("PRAGMA index_list(jobs)").fetchall():
        if index[3] != "u":  # made by a UNIQUE column constraint
            continue
        columns = [c[2] for c in db.execute(f"PRAGMA index_info('{index[1]}')").fetchall()]
        if columns == ["idempotency_key"]:
            _rebuild_sqlite(db)
            return


def _rebuild_sqlite(db: Connection) -> None:
    """SQLite cannot drop a column constraint: copy the rows into a table of the current
    schema and put it in the old one's place (inside the caller's transaction)."""
    names = ", ".join(name for name, _ in JOB_COLUMNS)
    db.execute("DROP TABLE IF EXISTS jobs_migrating")
    db.execute(f"CREATE TABLE jobs_migrating ({_columns('REAL')})")
    db.execute(f"INSERT INTO jobs_migrating ({names}) SELECT {names} FROM jobs")
    db.execute("DROP TABLE jobs")
    db.execute("ALTER TABLE jobs_migrating RENAME TO jobs")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "sequence numbers", _number_jobs),
    Migration(3, "idempotency keys per client", _keys_per_client),
)
assert MIGRATIONS[-1].version == SCHEMA_VERSION, "a schema step without its version"


# -- SQLite -------------------------------------------------------------------------------------


class SqliteDatabase(_EngineDatabase):
    node_local = True
    _postgresql = False

    def __init__(self, path: Path, settings: DatabaseSettings | None = None) -> None:
        from sqlalchemy import create_engine, event

        settings = settings or DatabaseSettings()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url,
            connect_args={"timeout": settings.busy_timeout_s, "check_same_thread": False},
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_recycle=settings.pool_recycle_s,
            pool_pre_ping=True,
        )
        busy_ms = int(settings.busy_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun here, below, not by the driver
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")
            dbapi_conn.execute(f"PRAGMA busy_timeout={busy_ms}")

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("pose_write") else "BEGIN")

        super().__init__(engine)
        try:
            self._open()
        except BaseException as exc:
            engine.dispose()
            orig = getattr(exc, "orig", None)
            if isinstance(orig, sqlite3.Error):  # the file cannot be used: said as SQLite says it
                raise orig from exc
            raise

    def _version(self, db: Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])  # type: ignore[index]

    def _set_version(self, db: Connection, old: int) -> None:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _column_names(self, db: Connection) -> set[str]:
        return {r[1] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}


# -- PostgreSQL ---------------------------------------------------------------------------------


class PostgresDatabase(_EngineDatabase):
    node_local = False
    _postgresql = True

    def __init__(self, url: str, settings: DatabaseSettings | None = None) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        settings = settings or DatabaseSettings()
        self.url = url
        target = make_url(url).set(drivername="postgresql+psycopg")
        query = dict(target.query)
        # the URL's own options (a search_path, say) are kept; the statement timeout joins them
        options = " ".join(
            [str(query.pop("options", "")), f"-c statement_timeout={int(settings.statement_timeout_s * 1000)}"]
        ).strip()
        connect_args: dict[str, Any] = {
            "options": options,
            "application_name": query.pop("application_name", APPLICATION_NAME),
            "connect_timeout": int(str(query.pop("connect_timeout", settings.connect_timeout_s))),
            "keepalives": 1,
            "keepalives_idle": settings.keepalive_idle_s,
            "keepalives_interval": settings.keepalive_interval_s,
            "keepalives_count": settings.keepalive_count,
        }
        engine = create_engine(
            target.set(query=query),
            connect_args=connect_args,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_recycle=settings.pool_recycle_s,
            pool_pre_ping=True,
        )
        super().__init__(engine)
        try:
            self._open()
        except Exception as exc:
            engine.dispose()
            if is_transient(exc):
                raise PoseError(
                    "job_store_unavailable", f"cannot reach the job store at {redact(url)}: {_first_line(exc)}",
                    status=503, details={"retry_after": 5},
                ) from exc
            raise

    def _version(self, db: Connection) -> int:
        db.execute("CREATE TABLE IF NOT EXISTS pose_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM pose_schema").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _set_version(self, db: Connection, old: int) -> None:
        if old == 0:
            db.execute("INSERT INTO pose_schema (version) VALUES (:v)", {"v": SCHEMA_VERSION})
        else:
            db.execute("UPDATE pose_schema SET version = :v", {"v": SCHEMA_VERSION})

    def _column_names(self, db: Connection) -> set[str]:
        return {
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'jobs'"
            ).fetchall()
        }
