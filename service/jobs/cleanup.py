"""Cleanup of files and rows nobody needs any more: job folders and uploads that no job owns
(orphans of a crash between moving an upload in and committing its job), and finished jobs past
the retention period.

A folder is only removed when it proves it is this store's: every job folder carries the id of
the store that created it (`service.jobs.layout.write_store_id`), and an orphan is a folder with
this store's id whose job the store no longer has. A folder of another store (a second
deployment on the same storage), one without an id, and everything while the store holds no job
at all (a wrong job store URL, a fresh schema) are left alone, and the log says why.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from service.jobs.db import Connection
from service.jobs.layout import read_store_id, write_store_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrphanScan:
    """What orphan cleanup removes and what it keeps, and why (`JobStore.scan_orphans`)."""

    store_id: str  # the id of the store that scanned
    jobs_known: int  # jobs the store holds
    remove: list[Path] = field(default_factory=list)  # this store's folders of gone jobs, and stale uploads
    foreign: list[str] = field(default_factory=list)  # folders made by another store: kept
    unmarked: list[str] = field(default_factory=list)  # folders that carry no store id: kept
    young: list[str] = field(default_factory=list)  # within the grace period (maybe being created): kept
    skipped: str | None = None  # why nothing at all is removed, if so

    def to_dict(self) -> dict[str, Any]:
        """The report operators read (``python -m service cleanup``)."""
        return {
            "store_id": self.store_id,
            "jobs_known": self.jobs_known,
            "remove": sorted(p.name for p in self.remove),
            "kept": {"other_store": sorted(self.foreign), "no_store_id": sorted(self.unmarked), "young": sorted(self.young)},
            "skipped": self.skipped,
        }


def scan_orphans(
    jobs_dir: Path, uploads_dir: Path, known: set[str], store_id: str, now: float, grace_s: float
) -> OrphanScan:
    """Which job folders not in ``known`` and which uploads, older than ``grace_s``, cleanup may
    remove: none while ``known`` is empty; of the folders only those that carry ``store_id``."""
    if not known:
        return OrphanScan(
            store_id, 0,
            skipped="the job store holds no jobs (a fresh or wrong job store?): nothing under the data folder is "
            "removed until it holds one",
        )
    scan = OrphanScan(store_id, len(known))
    for path in [*jobs_dir.iterdir(), *uploads_dir.iterdir()]:
        is_job_dir = path.parent == jobs_dir
        if is_job_dir and path.name in known:
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - path.lstat().st_mtime < grace_s:
                scan.young.append(path.name)
                continue
            if is_job_dir:
                owner = read_store_id(path) if path.is_dir() and not path.is_symlink() else None
                if owner is None:
                    scan.unmarked.append(path.name)
                    continue
                if owner != store_id:
                    scan.foreign.append(path.name)
                    continue
            scan.remove.append(path)
    return scan


def log_scan(scan: OrphanScan) -> None:
    """Say why folders were kept (once per scan, a few names each)."""
    if scan.skipped:
        log.warning("orphan cleanup skipped: %s", scan.skipped)
    if scan.foreign:
        log.warning("orphan cleanup kept %d job folders made by another job store (not %s), e.g. %s",
                    len(scan.foreign), scan.store_id, scan.foreign[:3])
    if scan.unmarked:
        log.warning("orphan cleanup kept %d job folders that carry no store id, e.g. %s", len(scan.unmarked), scan.unmarked[:3])


def remove_paths(paths: Iterable[Path]) -> list[str]:
    """Remove folders and files (a vanished one is skipped); the names removed."""
    removed: list[str] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def delete_expired_rows(db: Connection, finished_before: float) -> list[str]:
    """Delete the rows of jobs that finished at or before ``finished_before``; their ids."""
    rows = db.execute(
        "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at <= :before",
        {"before": finished_before},
    ).fetchall()
    ids = [r["id"] for r in rows]
    for job_id in ids:
        db.execute("DELETE FROM jobs WHERE id = :id", {"id": job_id})
    return ids


def remove_job_dirs(jobs_dir: Path, ids: Iterable[str]) -> None:
    """Remove the folders of deleted jobs (a referenced media file outside them is kept)."""
    for job_id in ids:
        shutil.rmtree(jobs_dir / job_id, ignore_errors=True)


def mark_own_folders(jobs_dir: Path, known: Iterable[str], store_id: str) -> None:
    """Write ``store_id`` into the folders of the store's jobs (``known``) that carry none (made
    before store ids); a folder that names another store is left as it is, and logged."""
    for job_id in known:
        job_dir = jobs_dir / job_id
        if not job_dir.is_dir():
            continue
        owner = read_store_id(job_dir)
        if owner is None:
            with contextlib.suppress(OSError):
                write_store_id(job_dir, store_id)
        elif owner != store_id:
            log.warning("job folder %s names the job store %s, not this one (%s)", job_id, owner, store_id)
