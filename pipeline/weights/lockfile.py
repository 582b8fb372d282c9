"""The digest lock file (`DigestLock`): size and sha256 of each file first obtained without a
published checksum, recorded once and enforced afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..atomic import atomic_write
from ..errors import WeightsError
from .cache import RootName
from .digest import sha256_of
from .flock import _file_lock

logger = logging.getLogger(__name__)


def lock_name(root: RootName, path: str) -> str:
    """``<root>/<path in the root>``: the same on every machine whose caches have the official layout."""
    return f"{root}/{path}"


@dataclass(frozen=True)
class LockEntry:
    """What a file was when first obtained."""

    size: int
    sha256: str
    mtime_ns: int | None = None  # when last hashed: a file whose size and mtime still match is not read again
    key: str = ""  # the catalog key (or download name), for people reading the lock file
    source: str = ""  # the address it was downloaded from, or the copy it was imported from
    recorded: str = ""  # UTC, ISO 8601


class DigestLock:
    """The lock file: size and sha256 of each file first obtained without a published checksum.

    Recorded on the first verified download or import, enforced afterwards: at every start the
    size (and, when its mtime moved, the sha256) of each file in place, and on every later
    download or import the full digest, so a file replaced on disk or served differently by
    another address is refused. Entries are named by `lock_name` (``phalp/weights/...``), so
    one lock file can be copied to every machine whose caches have the official layout.
    Writes hold an inter-process lock and replace the file in one rename.
    """

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def entries(self) -> dict[str, LockEntry]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            return {name: LockEntry(**entry) for name, entry in doc["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsError(
                "weights_lock_invalid", f"{self.path} is not a readable weights lock file ({exc!r}); fix or delete it"
            ) from exc

    def get(self, name: str) -> LockEntry | None:
        return self.entries().get(name)

    def check(self, name: str, path: Path, *, key: str, deep: bool) -> None:
        """`WeightsError` ``weights_lock_mismatch`` when ``path`` is not what ``name`` recorded."""
        entry = self.get(name)
        if entry is None:
            return
        st = path.stat()
        if st.st_size != entry.size:
            raise self._mismatch(name, entry, path, key, f"has {st.st_size} bytes")
        if not deep and st.st_mtime_ns == entry.mtime_ns:
            return
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise self._mismatch(name, entry, path, key, f"has sha256 {digest}")
        if st.st_mtime_ns != entry.mtime_ns:  # the same bytes, touched: remember the new stat
            self._update(name, lambda e: dataclasses.replace(e, mtime_ns=st.st_mtime_ns) if e == entry else e)

    def record(self, name: str, path: Path, *, key: str, source: str) -> LockEntry | None:
        """Record ``path``'s size and digest under ``name``; refuse one that differs from an entry
        another process recorded meanwhile."""
        if self.path is None:
            return None
        st = path.stat()
        entry = LockEntry(
            size=st.st_size,
            sha256=sha256_of(path),
            mtime_ns=st.st_mtime_ns,
            key=key,
            source=source,
            recorded=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

        def put(old: LockEntry | None) -> LockEntry:
            if old is not None and (old.size, old.sha256) != (entry.size, entry.sha256):
                raise self._mismatch(name, old, path, key, f"has sha256 {entry.sha256} ({entry.size} bytes)")
            return entry if old is None else dataclasses.replace(old, mtime_ns=entry.mtime_ns)

        self._update(name, put)
        logger.info("recorded %s (%d bytes, sha256 %s) in %s", name, entry.size, entry.sha256, self.path)
        return entry

    def forget(self, keys: Iterable[str]) -> list[str]:
        """Drop the entries of these catalog keys (or entry names); the names dropped."""
        wanted = set(keys)
        dropped = [n for n, e in self.entries().items() if n in wanted or e.key in wanted]
        for name in dropped:
            self._update(name, lambda e: None)
        return dropped

    def _update(self, name: str, change: Callable[[LockEntry | None], LockEntry | None]) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.path.with_name(self.path.name + ".flock")):
                entries = self.entries()
                new = change(entries.get(name))
                if new is None:
                    entries.pop(name, None)
                else:
                    entries[name] = new
                doc = {"version": self.VERSION, "files": {n: dataclasses.asdict(e) for n, e in sorted(entries.items())}}
                atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode())
        except OSError as exc:  # a read-only model folder: nothing can be recorded there
            logger.warning("cannot write the weights lock file %s: %s", self.path, exc)

    def _mismatch(self, name: str, entry: LockEntry, path: Path, key: str, what: str) -> WeightsError:
        return WeightsError(
            "weights_lock_mismatch",
            f"{key}: {path} {what}, but {self.path} recorded {entry.size} bytes with sha256 {entry.sha256} "
            f"when it was first obtained ({entry.source or 'unknown source'}, {entry.recorded or 'unknown time'}). "
            "If the file was damaged or replaced by mistake, delete it and run `python -m pipeline weights --fetch` "
            "(or `weights import PATH`) to get it again; if the new file is the one you want, run "
            f"`python -m pipeline weights --forget {key}` (or delete the entry {name!r} from the lock file)",
            details={"file": key, "path": str(path), "lock": str(self.path), "entry": name},
        )
