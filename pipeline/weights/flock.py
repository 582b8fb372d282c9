"""Inter-process file locks (``fcntl.flock``): one holder at a time of a file being written."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One holder at a time across the processes of a machine (replicas starting together):
    the second waits, then finds the file the first one downloaded."""
    import fcntl

    with open(path, "a+b") as fh:
        if not _try_lock(fh, fcntl):
            logger.info("waiting for another process to finish with %s", path.name.rsplit(".", 1)[0])
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _try_lock(fh: Any, fcntl: Any) -> bool:
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
