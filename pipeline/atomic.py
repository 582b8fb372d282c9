"""Files that appear under their name only once complete: written beside, fsynced, renamed.

Results, checkpoints and segments live on storage that other processes (and, on a cluster,
other nodes) read while they are written; a reader must see the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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
    tmp = _create_beside(target)
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


def _create_beside(target: Path) -> Path:
    """A new empty file beside ``target`` under a random hidden name, created with the mode a
    plain ``open`` gives (0666 less the umask): `tempfile.mkstemp` would make every result 0600,
    unreadable to the user's group and to a web server that serves the folder."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


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
