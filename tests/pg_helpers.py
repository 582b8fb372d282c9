"""A PostgreSQL schema of its own for a test or a benchmark run: created, handed out as a URL
whose connections use it, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator
from urllib.parse import quote

POSTGRES_URL_ENV = "POSE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


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
