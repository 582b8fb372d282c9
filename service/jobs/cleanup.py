"""Cleanup of files and rows nobody needs any more: job folders and uploads that no job owns
(orphans of a crash between moving an upload in and committing its job), and finished jobs past
the retention period."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterable

from service.jobs.db import Connection


def remove_orphans(jobs_dir: Path, uploads_dir: Path, known: set[str], now: float, grace_s: float) -> list[str]:
    """Remove job folders not in ``known`` and uploads, older than ``grace_s``; their names."""
    removed: list[str] = []
    for path in [*jobs_dir.iterdir(), *uploads_dir.iterdir()]:
        is_job_dir = path.parent == jobs_dir
        if is_job_dir and path.name in known:
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - path.lstat().st_mtime < grace_s:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def delete_expired_rows(db: Connection, finished_before: float) -> list[str]:
    """Delete the rows of jobs that finished at or before ``finished_before``; their ids."""
    rows = db.execute(
        "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at <= ?",
        (finished_before,),
    ).fetchall()
    ids = [r["id"] for r in rows]
    for job_id in ids:
        db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    return ids


def remove_job_dirs(jobs_dir: Path, ids: Iterable[str]) -> None:
    """Remove the folders of deleted jobs (a referenced media file outside them is kept)."""
    for job_id in ids:
        shutil.rmtree(jobs_dir / job_id, ignore_errors=True)
