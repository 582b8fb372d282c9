"""The job folder layout and its file names.

Every job has a folder under the storage folder, which on a cluster is a mount every node shares::

    <data_dir>/jobs.sqlite3                    the SQLite database (when no job_store URL is set)
    <data_dir>/uploads/<random><suffix>        uploads being received (`JobStore.new_upload_path`)
    <data_dir>/jobs/<id>/store-id              the id of the job store that created the folder
    <data_dir>/jobs/<id>/input.<ext>           the accepted input, moved in by `JobStore.create`
    <data_dir>/jobs/<id>/result*.*, ...        results and checkpoints, each written atomically

Job ids name folders and result names name files, so both are checked before they touch a path.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping

from pipeline.atomic import fsync_dir
from pipeline.errors import InputError
from service.jobs.errors import not_found

_ID = re.compile(r"[0-9a-f]{32}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,10})?")
STORE_ID_FILE = "store-id"


def check_id(job_id: str) -> str:
    """Job ids name folders: anything but 32 lowercase hex digits is simply not a job."""
    if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
        raise not_found(job_id)
    return job_id


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise ValueError(f"expected a plain file name (letters, digits, '._-'), got {name!r}")
    return name


def upload_name(suffix: str = "") -> str:
    """A fresh, random name for an upload ending in ``suffix`` (``suffix_invalid`` unless like '.mp4')."""
    if not _SUFFIX.fullmatch(suffix):
        raise InputError("suffix_invalid", f"expected a file suffix like '.mp4', got {suffix!r}")
    return f"{uuid.uuid4().hex}{suffix}"


def input_name(input_file: Path) -> str:
    """The name an accepted upload gets in its job folder: ``input`` and its suffix in lower case."""
    return "input" + input_file.suffix.lower()


def result_names(job_dir: Path, result_paths: Mapping[str, str | Path]) -> dict[str, str]:
    """Result name -> path relative to ``job_dir``, each an existing file inside the job folder."""
    names: dict[str, str] = {}
    for name, path in result_paths.items():
        full = (job_dir / path).resolve()
        if not full.is_relative_to(job_dir.resolve()) or not full.is_file():
            raise ValueError(f"result {name!r} must be an existing file in the job folder, got {path}")
        names[check_name(name)] = full.relative_to(job_dir.resolve()).as_posix()
    return names


def write_store_id(job_dir: Path, store_id: str) -> None:
    """Mark ``job_dir`` as made by the store ``store_id`` (durably): cleanup deletes a folder only
    when it carries its own store's id (`service.jobs.cleanup`)."""
    path = job_dir / STORE_ID_FILE
    with open(path, "w", encoding="ascii") as f:
        f.write(store_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(job_dir)


def read_store_id(job_dir: Path) -> str | None:
    """The id of the store that made ``job_dir``; None when the folder carries none (made before
    store ids, or by something else) or it cannot be read."""
    try:
        text = (job_dir / STORE_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _ID.fullmatch(text) else None


def move_input_into(job_dir: Path, input_file: Path) -> Path:
    """Move an upload into its new job folder as ``input<suffix>`` (durably); the folder is removed
    if the move fails."""
    input_path = job_dir / input_name(input_file)
    try:
        os.replace(input_file, input_path)
    except OSError:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    fsync_dir(job_dir)
    return input_path
