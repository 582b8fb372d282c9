"""PostgreSQL for tests and benchmarks: a schema of its own on the shared server (created,
handed out as a URL whose connections use it, dropped afterwards), or a whole server of its own
(`private_server`) for faults the shared one must not suffer, such as a restart."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

POSTGRES_URL_ENV = "POSE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_BIN_ENV = "POSE_TEST_PG_BIN"  # the folder of initdb, pg_ctl and postgres, for `private_server`


def server_url() -> str:
    """The PostgreSQL server tests and benchmarks use: ``$POSE_TEST_POSTGRES_URL`` or the local one."""
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


@contextlib.contextmanager
def isolated_schema(server_url: str, prefix: str = "pose_test") -> Iterator[tuple[str, str]]:
    """(URL whose connections search only the new schema, the schema's name)."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server_url else "?"
    try:
        yield f"{server_url}{sep}options={quote(f'-csearch_path={schema}')}", schema
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


# -- a PostgreSQL server of its own, to stop and restart ----------------------------------------


class PrivateServerUnavailable(RuntimeError):
    """The PostgreSQL server programs are not installed, or the server cannot be run here."""


def _server_programs() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$POSE_TEST_PG_BIN``, the
    ``PATH``, or the newest Debian-style ``/usr/lib/postgresql/<version>/bin``."""
    env = os.environ.get(PG_BIN_ENV)
    candidates = [Path(env)] if env else []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    candidates.extend(reversed(versions))
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PrivateServerUnavailable(
        f"the PostgreSQL server programs (initdb, pg_ctl, postgres) are not installed; set {PG_BIN_ENV} to their folder"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A PostgreSQL cluster in a folder of its own, on a free loopback port, trust auth; run by
    the ``postgres`` user when this process is root (PostgreSQL refuses to run as root)."""

    def __init__(self, folder: Path, programs: Path, port: int, user: str | None) -> None:
        self.folder, self.programs, self.port, self.user = folder, programs, port, user
        self.data = folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.programs / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60", *args)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        settings = {  # in the cluster's own configuration: they hold across restarts
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.folder),
            "fsync": "off",  # a test's data: no crash of the machine to survive
            "full_page_writes": "off",
            "max_connections": "50",
        }
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are ended, a checkpoint written; ``immediate``: no
        checkpoint, the next start recovers); returns once it is down."""
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again; returns once it accepts connections."""
        self._ctl("restart", "-m", mode)


@contextlib.contextmanager
def private_server() -> Iterator[tuple[str, PrivateServer]]:
    """(URL of database ``postgres`` as user ``postgres``, the server): a fresh PostgreSQL cluster,
    started; stopped (``immediate``) and its folder removed afterwards.

    Raises `PrivateServerUnavailable` when the server programs are missing or, as root, there is
    no ``postgres`` user to run them as."""
    programs = _server_programs()
    user: str | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PrivateServerUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
        user = owner.pw_name
    folder = Path(tempfile.mkdtemp(prefix="pose-pg-"))
    try:
        if user is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        server = PrivateServer(folder, programs, _free_port(), user)
        server.init()
        server.start()
        try:
            yield server.url, server
        finally:
            with contextlib.suppress(Exception):  # already down, or stopped by the test
                server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
