"""Safe tar extraction: members that would land outside the destination folder are refused
before anything is written, and each file takes its name only once complete.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from pathlib import Path
from typing import IO

from ..errors import WeightsError
from .digest import _CHUNK


def _tar_member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked or read, judged by its names alone: absolute, ``..``,
    a link leaving the archive's folder, or something that is no file, folder or link."""
    problem = _name_problem(m.name)
    if problem:
        return f"member {m.name!r} {problem}"
    if m.issym() or m.islnk():
        # A symlink is relative to its own folder, a hard link to the archive's top.
        target = posixpath.join(posixpath.dirname(m.name), m.linkname) if m.issym() else m.linkname
        if m.linkname.startswith(("/", "\\")) or _name_problem(posixpath.normpath(target)):
            return f"link {m.name!r} -> {m.linkname!r} leaves the archive's folder"
    elif not (m.isfile() or m.isdir()):
        return f"member {m.name!r} is not a regular file"
    return None


def _name_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute name"
    if ".." in name.replace("\\", "/").split("/"):
        return "has a '..' component"
    return None


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Unpack a tar archive into ``dest``, refusing members that would land outside it.

    Absolute names, ``..`` components, links pointing out of ``dest`` and device files are
    refused before anything is written; each file appears under its name only once complete.
    """
    dest = dest.resolve()
    written: list[Path] = []
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                problem = _tar_member_problem(m)
                # Resolved too: a link already in ``dest`` may lead a plain name outside it.
                if problem is None and not _inside((dest / m.name).resolve(), dest):
                    problem = f"member {m.name!r} would be written outside {dest}"
                if problem:
                    raise WeightsError("archive_unsafe", f"{archive}: {problem}")
            for m in members:
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if m.isfile():
                    src = tar.extractfile(m)
                    assert src is not None
                    with src:
                        _write_whole(src, target)
                else:
                    if target.exists() or target.is_symlink():
                        target.unlink()
                    if m.issym():
                        target.symlink_to(m.linkname)
                    else:
                        shutil.copyfile(dest / m.linkname, target)
                written.append(target)
    except tarfile.TarError as exc:
        raise WeightsError("archive_corrupt", f"{archive} is not a readable tar archive: {exc}") from exc
    return written


def _write_whole(src: IO[bytes], target: Path) -> None:
    """Copy ``src`` beside ``target``, then rename: an interrupted copy never takes its name."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
