"""A PostgreSQL schema of its own for a test or a benchmark run: created, handed out as a URL
whose connections use it, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from typing import Iterator
from urllib.parse import quote


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
