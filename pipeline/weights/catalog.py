"""The catalog of model files: which files each model needs, where they are found, what to say
when they are missing, `check_available` (whether `ensure` could succeed, said at once) and
`ensure` / `verify` to obtain and check them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import WeightsError
from .cache import MIRRORS_ENV, CacheRoots
from .digest import sha256_of
from .download import _fetch, _tried_lines, _ways_out
from .lockfile import DigestLock
from .spec import Download, FileStatus, WeightFile

# Modules that each define ``FILES: tuple[WeightFile, ...]`` for one model. Imported lazily by
# `catalog()` so that importing this module never pulls in model code.
CATALOG_MODULES: tuple[str, ...] = (
    "pipeline.models.hmr2.files",
    "pipeline.models.vitdet.files",
    "pipeline.models.regnety.files",
    "pipeline.models.phalp.files",
)


def catalog(models: Iterable[str] | None = None) -> list[WeightFile]:
    """Every known file, optionally only those of the named models ("hmr2", "vitdet", "regnety", "phalp")."""
    files: list[WeightFile] = []
    for module_name in CATALOG_MODULES:
        model = module_name.split(".")[-2]
        if models is not None and model not in set(models):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        files.extend(module.FILES)
    return files


def locate(file: WeightFile, roots: CacheRoots) -> FileStatus:
    candidates = file.candidates(roots)
    found = next((p for p in candidates if p.is_file()), None)
    return FileStatus(file=file, found=found, looked_in=tuple(candidates))


def report(files: Sequence[WeightFile], roots: CacheRoots) -> list[FileStatus]:
    return [locate(f, roots) for f in files]


IMPORT_HINT = (
    "a copy held elsewhere (another machine's cache folder, an archive of one): "
    "`python -m pipeline weights import PATH`"
)


def missing_message(missing: Sequence[FileStatus], *, import_hint: bool = True) -> str:
    """One message naming each missing file, where it was looked for, and how to provide it."""
    lines = [f"{len(missing)} model file(s) missing:"]
    downloads: dict[Download, list[str]] = {}
    for st in missing:
        f = st.file
        lines.append(f"- {f.key} ({f.description})")
        lines.append("    looked for: " + "; ".join(str(p) for p in st.looked_in))
        if f.download is not None:
            downloads.setdefault(f.download, []).append(f.key)
        if f.how_to_get:
            lines.append("    " + f.how_to_get)
    for dl, keys in downloads.items():
        lines.append(
            f"{', '.join(keys)}: run `python -m pipeline weights --fetch` with network access (downloads "
            f"{dl.name} from {dl.urls[0]}, or from the mirrors in ${MIRRORS_ENV}), or place the files at "
            "the first path listed for each"
        )
    if import_hint:
        lines.append(IMPORT_HINT)
    return "\n".join(lines)


def offline() -> bool:
    """``POSE_OFFLINE`` is set (to anything but 0): nothing is downloaded."""
    return os.environ.get("POSE_OFFLINE", "") not in ("", "0")


def _writable(path: Path) -> bool:
    """Whether a file could be created at ``path``: its nearest existing folder can be written."""
    for folder in path.parents:
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return False


def check_available(files: Sequence[WeightFile], roots: CacheRoots, *, download: bool = True) -> list[FileStatus]:
    """Fail at once, with one message naming every file, when `ensure` of ``files`` could not
    succeed; the statuses when it could. Nothing is downloaded, created or read in full.

    What stops it: a missing file that `ensure` would not download, i.e. a licensed one (SMPL,
    never downloaded), any missing file when downloads are off (``download=False`` or
    ``POSE_OFFLINE=1``), or one whose download could not be written (its cache folder is
    read-only); and a file in place that fails the checks `ensure` makes of files in place (size,
    lock file entry). Missing public files that can be downloaded are left to `ensure`: alone they
    stop nothing, but once something else stops it they are named in the same message.

    The `WeightsError` is ``weights_missing`` when a file stops it by being missing, else the
    code of the first failed check; ``details``: ``missing`` (the missing files that stop it),
    ``downloadable`` (missing, to be downloaded), ``problems`` (key: message of each failed check).
    """
    allowed = download and not offline()
    statuses = report(files, roots)
    blocking: list[FileStatus] = []
    downloadable: list[FileStatus] = []
    unwritable: dict[Path, None] = {}
    problems: dict[str, WeightsError] = {}
    for st in statuses:
        if st.present:
            try:
                check_file(st, roots, deep=False)
            except WeightsError as exc:
                problems[st.file.key] = exc
            continue
        dl = st.file.download
        if allowed and dl is not None:
            target = roots.root(dl.root) / dl.target
            if _writable(target):
                downloadable.append(st)
                continue
            unwritable[roots.root(dl.root)] = None
        blocking.append(st)
    if not blocking and not problems:
        return statuses
    parts: list[str] = []
    if blocking:
        parts.append(missing_message(blocking))
        parts.extend(f"downloads cannot be written into {folder}: make it writable, or use another cache folder" for folder in unwritable)
    if problems:
        parts.append(f"{len(problems)} model file(s) in place that cannot be used:")
        parts.extend(f"- {message}" for message in dict.fromkeys(exc.message for exc in problems.values()))
    if downloadable:
        parts.append(
            f"also missing, {len(downloadable)} public file(s) downloaded when first needed "
            f"(`python -m pipeline weights --fetch` fetches them now): " + ", ".join(st.file.key for st in downloadable)
        )
    code = "weights_missing" if blocking else next(iter(problems.values())).code
    details: dict[str, Any] = {
        "missing": [st.file.key for st in blocking],
        "downloadable": [st.file.key for st in downloadable],
        "problems": {key: exc.message for key, exc in problems.items()},
    }
    raise WeightsError(code, "\n".join(parts), details=details)


def ensure(
    files: Sequence[WeightFile],
    roots: CacheRoots,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Paths of all ``files``, downloading what can be downloaded; `WeightsError` otherwise.

    Offline (``download=False`` or ``POSE_OFFLINE=1``) nothing is fetched and the error lists
    every missing file at once. Files found in place are held to their lock file entries; fresh
    downloads are verified in full and, without a published checksum, recorded there.
    """
    if offline():
        download = False
    statuses = report(files, roots)
    absent_before = {st.file.key for st in statuses if not st.present}
    failures: dict[Download, WeightsError] = {}
    sources: dict[Download, str] = {}
    if download and absent_before:
        pending: dict[Download, list[FileStatus]] = {}
        for st in statuses:
            if not st.present and st.file.download is not None:
                pending.setdefault(st.file.download, []).append(st)
        for dl in pending:
            try:
                sources[dl] = _fetch(dl, roots, progress=progress, timeout=30.0)
            except WeightsError as exc:
                failures[dl] = exc
        statuses = report(files, roots)
    missing = [st for st in statuses if not st.present]
    if missing:
        refused = {dl: exc for dl, exc in failures.items() if "tried" in exc.details}
        message = missing_message(missing, import_hint=not refused)  # else the ways out below say it
        details: dict[str, Any] = {"missing": [st.file.key for st in missing]}
        if failures:
            message += "\ndownloads that failed:"
            for dl, err in failures.items():
                message += f"\n- {dl.name}:\n" + _tried_lines(err.details["tried"]) if dl in refused else f"\n- {dl.name}: {err.message}"
        if refused:
            message += "\n" + _ways_out([(dl, roots.root(dl.root) / dl.target) for dl in refused])
            details["downloads"] = {dl.name: exc.details["tried"] for dl, exc in refused.items()}
        raise WeightsError("weights_missing", message, details=details)
    lock = DigestLock(roots.lock)
    paths: dict[str, Path] = {}
    for st in statuses:
        assert st.found is not None
        fresh = st.file.key in absent_before
        # Fresh downloads get the full check; files already in place the cheap ones and their
        # lock entry (their loaders fail with a precise message on anything else).
        check_file(st, roots, deep=fresh)
        if fresh and st.file.sha256 is None and lock.get(st.lock_name) is None:
            origin = st.file.download
            source = sources.get(origin, "") if origin is not None else ""
            lock.record(st.lock_name, st.found, key=st.file.key, source=source)
        paths[st.file.key] = st.found
    return paths


def check_file(st: FileStatus, roots: CacheRoots, *, deep: bool) -> None:
    """A present file against its lock file entry, then `verify`."""
    assert st.found is not None, f"{st.file.key} is not present"
    DigestLock(roots.lock).check(st.lock_name, st.found, key=st.file.key, deep=deep)
    verify(st.file, st.found, deep=deep)


def verify(file: WeightFile, path: Path, *, deep: bool = True) -> None:
    """Size; with ``deep``, the checksum when known and the file's own loadability check."""
    size = path.stat().st_size
    if size < file.min_bytes:
        raise WeightsError(
            "weights_corrupt",
            f"{file.key}: {path} has {size} bytes, expected at least {file.min_bytes}; delete it and fetch again",
        )
    if not deep:
        return
    if file.sha256 is not None:
        digest = sha256_of(path)
        if digest != file.sha256:
            raise WeightsError(
                "weights_corrupt",
                f"{file.key}: {path} has sha256 {digest}, expected {file.sha256}; delete it and fetch again",
            )
    if file.check is not None:
        try:
            file.check(path)
        except WeightsError:
            raise
        except Exception as exc:  # a loader's own error: say which file, keep the cause
            raise WeightsError("weights_corrupt", f"{file.key}: {path} cannot be read: {exc}") from exc
