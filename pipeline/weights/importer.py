"""Adopting files a user already holds: `import_weights` from a cache folder or a tar / zip
archive, each file checked as a fresh download is before it is put in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from ..errors import WeightsError
from .archive import _name_problem, _tar_member_problem
from .cache import CacheRoots, RootName
from .catalog import locate, verify
from .digest import _CHUNK, _matches
from .flock import _file_lock
from .lockfile import DigestLock, lock_name
from .spec import WeightFile

logger = logging.getLogger(__name__)


ImportHow = Literal["hardlink", "copy", "extract"]


class _Source:
    """Files of a folder or an archive, by their relative POSIX names."""

    label: str
    names: list[str]

    def origin(self, name: str) -> str:
        return f"{self.label}/{name}"

    def position(self, name: str) -> int:
        """Where ``name`` lies in the source, for reading it front to back."""
        return 0

    def place(self, name: str, tmp: Path) -> ImportHow:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FolderSource(_Source):
    def __init__(self, base: Path) -> None:
        self.base = base
        self.label = str(base)
        self.names = []
        for folder, dirs, files in os.walk(base):  # folder links are not followed: no cycles
            dirs[:] = [d for d in dirs if d not in (".git", "__pycache__")]
            rel = Path(folder).relative_to(base).as_posix()
            for f in files:
                if (Path(folder) / f).is_file():
                    self.names.append(f if rel == "." else f"{rel}/{f}")

    def place(self, name: str, tmp: Path) -> ImportHow:
        src = (self.base / name).resolve()
        try:
            os.link(src, tmp)  # same filesystem: no second copy of a multi-GB file
            return "hardlink"
        except OSError:
            shutil.copy2(src, tmp)
            return "copy"


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self.tar = tarfile.open(path)
            members = self.tar.getmembers()
        except tarfile.TarError as exc:
            raise WeightsError("archive_corrupt", f"{path} is not a readable tar archive: {exc}") from exc
        try:
            for m in members:
                problem = _tar_member_problem(m)
                if problem:
                    raise WeightsError("archive_unsafe", f"{path}: {problem}; nothing was imported")
        except WeightsError:
            self.tar.close()
            raise
        self.members = {_strip_dot(m.name): m for m in members if not m.isdir()}
        self.names = list(self.members)

    def origin(self, name: str) -> str:
        return f"{self.label}:{name}"

    def position(self, name: str) -> int:
        return self.members[name].offset

    def place(self, name: str, tmp: Path) -> ImportHow:
        try:
            src = self.tar.extractfile(self.members[name])
        except (tarfile.TarError, KeyError) as exc:
            raise WeightsError("archive_corrupt", f"{self.origin(name)} cannot be read: {exc!r}") from exc
        if src is None:
            raise WeightsError("archive_corrupt", f"{self.origin(name)} holds no data")
        with src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        return "extract"

    def close(self) -> None:
        self.tar.close()


class _ZipSource(_Source):
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise WeightsError("archive_corrupt", f"{path} is not a readable zip archive: {exc}") from exc
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in self.zip.infolist():
            problem = _name_problem(info.filename)
            if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                problem = "is a link"
            if problem:
                self.zip.close()
                raise WeightsError("archive_unsafe", f"{path}: member {info.filename!r} {problem}; nothing was imported")
            if not info.is_dir():
                self.members[_strip_dot(info.filename)] = info
        self.names = list(self.members)

    def origin(self, name: str) -> str:
        return f"{self.label}:{name}"

    def place(self, name: str, tmp: Path) -> ImportHow:
        try:
            with self.zip.open(self.members[name]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise WeightsError("archive_corrupt", f"{self.origin(name)} cannot be read: {exc}") from exc
        return "extract"

    def close(self) -> None:
        self.zip.close()


def _strip_dot(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    if path.is_dir():
        source: _Source = _FolderSource(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        source = _ZipSource(path)
    elif path.is_file() and tarfile.is_tarfile(path):
        source = _TarSource(path)
    elif path.exists():
        raise WeightsError("import_source_invalid", f"{path} is neither a folder nor a tar or zip archive")
    else:
        raise WeightsError("import_source_invalid", f"{path} does not exist")
    try:
        yield source
    finally:
        source.close()


def _find(by_basename: Mapping[str, Sequence[str]], rel: str) -> str | None:
    """The name that is ``rel``, or ends with ``/rel`` (the cache folder anywhere inside the
    source: ``.cache/phalp/weights/...``, ``phalp/weights/...``); the shallowest when several."""
    hits = [n for n in by_basename.get(posixpath.basename(rel), ()) if n == rel or n.endswith("/" + rel)]
    return min(hits, key=lambda n: (n.count("/"), n)) if hits else None


def import_weights(source: str | os.PathLike[str], roots: CacheRoots, files: Sequence[WeightFile]) -> dict[str, Any]:
    """Adopt the catalog's files from a cache folder or an archive a user already holds.

    ``source`` is a 4D-Humans, PHALP or detectron2 cache folder, a ``--cache-dir`` folder (or a
    home folder holding the upstream caches), 4D-Humans' ``hmr2_data.tar.gz``, or a tar / zip of
    any of these: each file is found by its path in the official layout, anywhere inside.
    Each is checked as a fresh download is (published size and checksum, lock file entry, its
    own loadability check), then hard-linked (same filesystem) or copied into its root under a
    temporary name and renamed into place; files already in place are left alone. An archive
    with a member that would leave its folder is refused whole. Returns the JSON report.
    """
    source = Path(source).expanduser()
    lock = DigestLock(roots.lock)
    imported: list[dict[str, str]] = []
    present: list[dict[str, str]] = []
    missing: list[str] = []
    rejected: list[dict[str, str]] = []
    found_any = False
    with _open_source(source) as src:
        by_basename: dict[str, list[str]] = {}
        for n in src.names:
            by_basename.setdefault(posixpath.basename(n), []).append(n)
        plan: list[tuple[WeightFile, RootName, str, str]] = []
        for file in files:
            match = next(
                ((r, rel, hit) for r, rel in file.placements() if (hit := _find(by_basename, rel)) is not None), None
            )
            found_any = found_any or match is not None
            st = locate(file, roots)
            if st.present:
                present.append({"key": file.key, "path": str(st.found)})
            elif match is None:
                missing.append(file.key)
            else:
                plan.append((file, *match))
        # In the archive's own order: a compressed tar read backwards is decompressed again from its start.
        for file, root, rel, name in sorted(plan, key=lambda item: src.position(item[3])):
            outcome = _import_one(file, root, rel, src, name, roots, lock)
            (imported if "to" in outcome else rejected).append(outcome)
    result: dict[str, Any] = {
        "source": str(source),
        "roots": roots.to_dict(),
        "lock": str(roots.lock) if roots.lock else None,
        "imported": imported,
        "present": present,
        "missing": missing,
        "rejected": rejected,
        "ok": found_any and not rejected,
    }
    if not found_any:
        result["note"] = (
            f"none of the {len(files)} model files is inside {source}; expected a 4D-Humans, PHALP or detectron2 cache "
            "folder (or an archive of one) with the official layout, e.g. weights/hmar_v2_weights.pth"
        )
    return result


def _import_one(
    file: WeightFile, root: RootName, rel: str, src: _Source, name: str, roots: CacheRoots, lock: DigestLock
) -> dict[str, str]:
    dest = roots.root(root) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    origin = src.origin(name)
    tmp = dest.with_name(f".import-{os.getpid()}-{dest.name}")
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another process put it there meanwhile
            return {"key": file.key, "from": origin, "to": str(dest), "how": "present"}
        try:
            how = src.place(name, tmp)
            _check_adopted(file, root, rel, tmp, lock)
            os.replace(tmp, dest)
        except (WeightsError, OSError) as exc:
            tmp.unlink(missing_ok=True)
            reason = exc.message if isinstance(exc, WeightsError) else f"cannot be read: {exc}"
            logger.warning("not imported: %s from %s: %s", file.key, origin, reason)
            return {"key": file.key, "from": origin, "reason": reason.replace(str(tmp), origin)}
    if file.sha256 is None and lock.get(lock_name(root, rel)) is None:
        lock.record(lock_name(root, rel), dest, key=file.key, source=f"import {origin}")
    logger.info("imported %s: %s -> %s (%s)", file.key, origin, dest, how)
    return {"key": file.key, "from": origin, "to": str(dest), "how": how}


def _check_adopted(file: WeightFile, root: RootName, rel: str, path: Path, lock: DigestLock) -> None:
    """The checks of a fresh download: its published size and checksum when this file is itself a
    download, its lock file entry, then `verify` in full."""
    dl = file.download
    if dl is not None and (dl.root, dl.target) == (root, rel) and not _matches(path, dl.size, dl.sha256):
        raise WeightsError(
            "weights_corrupt", f"{file.key}: {path} is not the published {dl.name} (size or sha256 differs)"
        )
    lock.check(lock_name(root, rel), path, key=file.key, deep=True)
    verify(file, path, deep=True)
