"""Files that appear under their name only once complete: written beside, fsynced, renamed.

Results, checkpoints and segments live on storage that other processes (and, on a cluster,
other nodes) read while they are written; a reader must see the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], *, sync_dir: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to write; on success it replaces ``target`` in one rename (``sync_dir``:
    and the folder entry is flushed too, so the rename survives a crash)."""
    with atomic_path(target, sync_dir=sync_dir) as tmp, open(tmp, "wb") as f:
        yield f


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, sync_dir: bool = True) -> Iterator[Path]:
    """A temporary path beside ``target`` for a writer that opens files by name (an encoder);
    on success the file is fsynced and renamed onto ``target``, on failure removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(target.parent)


def atomic_write(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(target) as f:
        f.write(data)
    return Path(target)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
