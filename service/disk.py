"""The disk budget of the data folder: uploads, checkpoints, results and artifacts together.

Two bounds, either of which refuses new work with ``storage_full`` (507, ``Retry-After``):

* ``max_bytes``: what everything under the data folder may take (None: no budget of its own);
* ``min_free_bytes``: what must stay free on its file system, for the results of the jobs
  already accepted and for everything else on that disk.

What is promised and not yet written (the expected results of accepted jobs, the uploads
streaming in) is held in the job store (`service.jobs.usage`), on every Ingress replica's view:
an upload and a job fit only in the room this leaves less those holds. A refused upload's file
is deleted at once. Accepted jobs always run to their end, and retention
(`service.jobs.JobStore.purge_expired`) frees the space of old ones.

Usage is the sum of file sizes under the folder, walked at most every ``cache_s`` seconds.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PoseError

RETRY_AFTER_S = 60  # space comes back when jobs are deleted or expire: not in seconds


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links are not followed; vanishing files are skipped)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


@dataclass
class DiskBudget:
    """How much more may be written under ``root`` before new work is refused."""

    root: Path
    max_bytes: int | None = None
    min_free_bytes: int = 0
    cache_s: float = 2.0
    _used: int = field(default=0, init=False)
    _walked_at: float = field(default=float("-inf"), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def used_bytes(self) -> int:
        """Bytes under the folder, walked at most every ``cache_s`` seconds."""
        with self._lock:
            if time.monotonic() - self._walked_at >= self.cache_s:
                self._used = folder_bytes(self.root)
                self._walked_at = time.monotonic()
            return self._used

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def room(self) -> int:
        """Bytes that may still be written: the tighter of the budget and the free-space floor."""
        room = self.free_bytes() - self.min_free_bytes
        if self.max_bytes is not None:
            room = min(room, self.max_bytes - self.used_bytes())
        return max(0, room)

    def check(self, incoming: int, room: int | None = None) -> None:
        """Raise ``storage_full`` when ``incoming`` more bytes do not fit (``room``: a figure
        already taken, so a streaming upload does not walk the folder per chunk)."""
        room = self.room() if room is None else room
        if room <= 0 or incoming > room:
            raise self.full(incoming, room)

    def bounds(self) -> dict[str, int]:
        """The two bounds, for a ``storage_full`` answer's details."""
        return {"min_free_bytes": self.min_free_bytes, **({} if self.max_bytes is None else {"max_bytes": self.max_bytes})}

    def full(self, incoming: int, room: int) -> PoseError:
        details: dict[str, int] = {"retry_after": RETRY_AFTER_S, "incoming_bytes": incoming, "room_bytes": room, **self.bounds()}
        return PoseError(
            "storage_full",
            f"the data folder has room for {room} more bytes, this request needs {incoming} or more; "
            "retry when finished jobs are deleted or expire",
            details=details,
        )

    def report(self) -> dict[str, int | None]:
        """For /v1/info: used, budget, free on the file system, the floor, and the room left."""
        return {
            "used_bytes": self.used_bytes(), "max_bytes": self.max_bytes, "free_bytes": self.free_bytes(),
            "min_free_bytes": self.min_free_bytes, "room_bytes": self.room(),
        }
