"""Find, download and verify model files in the caches 4D-Humans, PHALP and detectron2 already use.

A machine that ran 4D-Humans before has every file where we look first:

* 4D-Humans: ``~/.cache/4DHumans`` (its ``CACHE_DIR_4DHUMANS``): HMR2 checkpoint, SMPL data;
* PHALP: ``~/.cache/phalp``: appearance encoder, pose predictor, UV atlas;
* detectron2: iopath's cache ``~/.torch/iopath_cache`` (``$FVCORE_CACHE`` when set): ViTDet.

Each root can be moved with an environment variable or a setting (`CacheRoots`). Files are
described as data (`WeightFile`, `Download`): where they live in the official layout, where
they are published (official location first, then known mirrors), and how to check them.
Missing public files are downloaded with a progress bar, resumed when a partial file is there,
extracted without letting an archive write outside its folder, then verified. Licensed files
(the SMPL body model) are never downloaded; the error says how to get them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from .errors import WeightsError

logger = logging.getLogger(__name__)

RootName = Literal["hmr2", "phalp", "detectron2"]

# Modules that each define ``FILES: tuple[WeightFile, ...]`` for one model. Imported lazily by
# `catalog()` so that importing this module never pulls in model code.
CATALOG_MODULES: tuple[str, ...] = (
    "pipeline.models.hmr2.files",
    "pipeline.models.vitdet.files",
    "pipeline.models.phalp.files",
)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheRoots:
    """Where each upstream project keeps its files."""

    hmr2: Path  # 4D-Humans' CACHE_DIR_4DHUMANS
    phalp: Path  # PHALP's cache (weights/, 3D/)
    detectron2: Path  # iopath's download cache, as detectron2's checkpointer uses it

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "CacheRoots":
        """Defaults of the upstream projects, overridden by ``POSE_*_CACHE`` variables."""
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        iopath_default = Path(env["FVCORE_CACHE"]) if env.get("FVCORE_CACHE") else home / ".torch" / "iopath_cache"
        return cls(
            hmr2=Path(env.get("POSE_4DHUMANS_CACHE") or home / ".cache" / "4DHumans").expanduser(),
            phalp=Path(env.get("POSE_PHALP_CACHE") or home / ".cache" / "phalp").expanduser(),
            detectron2=Path(env.get("POSE_DETECTRON2_CACHE") or iopath_default).expanduser(),
        )

    @classmethod
    def under(cls, base: str | os.PathLike[str]) -> "CacheRoots":
        """All three roots side by side in one folder (tiny profile, tests)."""
        base = Path(base)
        return cls(hmr2=base / "4DHumans", phalp=base / "phalp", detectron2=base / "iopath_cache")

    def root(self, name: RootName) -> Path:
        return getattr(self, name)

    def to_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Download:
    """One published file; an archive is unpacked into its root after download."""

    name: str
    root: RootName
    target: str  # where the downloaded file itself is kept, relative to the root
    urls: tuple[str, ...]  # official location first, then mirrors
    sha256: str | None = None
    size: int | None = None
    extract: bool = False


@dataclass(frozen=True)
class WeightFile:
    """A file a model needs, at its place in the official cache layout."""

    key: str  # stable id, e.g. "hmr2.checkpoint"
    root: RootName
    path: str  # relative to the root
    description: str
    download: Download | None = None  # None: never downloaded (licensed or user-provided)
    # Other accepted locations, as (root, relative path), in order of preference.
    alternatives: tuple[tuple[RootName, str], ...] = ()
    sha256: str | None = None
    min_bytes: int = 1
    how_to_get: str = ""  # shown when the file is missing and cannot be downloaded
    # Raises if the file cannot be used (wrong format, truncated); run after download.
    check: Callable[[Path], None] | None = field(default=None, compare=False)

    def candidates(self, roots: CacheRoots) -> list[Path]:
        return [roots.root(self.root) / self.path] + [roots.root(r) / p for r, p in self.alternatives]


@dataclass(frozen=True)
class FileStatus:
    file: WeightFile
    found: Path | None
    looked_in: tuple[Path, ...]

    @property
    def present(self) -> bool:
        return self.found is not None


def catalog(models: Iterable[str] | None = None) -> list[WeightFile]:
    """Every known file, optionally only those of the named models ("hmr2", "vitdet", "phalp")."""
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


def missing_message(missing: Sequence[FileStatus]) -> str:
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
            f"{dl.name} from {dl.urls[0]}), or place the files at the first path listed for each"
        )
    return "\n".join(lines)


def ensure(
    files: Sequence[WeightFile],
    roots: CacheRoots,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Paths of all ``files``, downloading what can be downloaded; `WeightsError` otherwise.

    Offline (``download=False`` or ``POSE_OFFLINE=1``) nothing is fetched and the error lists
    every missing file at once.
    """
    if os.environ.get("POSE_OFFLINE", "") not in ("", "0"):
        download = False
    statuses = report(files, roots)
    absent_before = {st.file.key for st in statuses if not st.present}
    failures: dict[str, str] = {}
    if download and absent_before:
        pending: dict[Download, list[FileStatus]] = {}
        for st in statuses:
            if not st.present and st.file.download is not None:
                pending.setdefault(st.file.download, []).append(st)
        for dl in pending:
            try:
                fetch(dl, roots, progress=progress)
            except WeightsError as exc:
                failures[dl.name] = exc.message
        statuses = report(files, roots)
    missing = [st for st in statuses if not st.present]
    if missing:
        message = missing_message(missing)
        if failures:
            message += "\ndownload failures:\n" + "\n".join(f"- {k}: {v}" for k, v in failures.items())
        raise WeightsError("weights_missing", message, details={"missing": [st.file.key for st in missing]})
    paths = {st.file.key: st.found for st in statuses}
    for st in statuses:
        # Fresh downloads get the full check; files already in place only the cheap ones
        # (their loaders fail with a precise message anyway).
        verify(st.file, st.found, deep=st.file.key in absent_before)  # type: ignore[arg-type]
    return paths  # type: ignore[return-value]


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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dl: Download, roots: CacheRoots, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``dl`` (trying each URL in turn), verify it, and unpack it if it is an archive."""
    root = roots.root(dl.root)
    dest = root / dl.target
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + ".lock")):
        return _fetch_locked(dl, root, dest, progress=progress, timeout=timeout)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One holder at a time across the processes of a machine (replicas starting together):
    the second waits, then finds the file the first one downloaded."""
    import fcntl

    with open(path, "a+b") as fh:
        if not _try_lock(fh, fcntl):
            logger.info("waiting for another process to finish downloading %s", path.name.removesuffix(".lock"))
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


def _fetch_locked(dl: Download, root: Path, dest: Path, *, progress: bool, timeout: float) -> Path:
    errors: list[str] = []
    if not (dest.is_file() and _download_ok(dl, dest)):
        for url in dl.urls:
            try:
                _download(url, dest, dl, progress=progress, timeout=timeout)
                break
            except (OSError, urllib.error.URLError, ValueError, WeightsError) as exc:
                logger.warning("download of %s from %s failed: %s", dl.name, url, exc)
                errors.append(f"{url}: {exc}")
        else:
            raise WeightsError("download_failed", f"could not download {dl.name}: " + "; ".join(errors))
    if dl.extract:
        safe_extract(dest, root)
    return dest


def _download_ok(dl: Download, path: Path) -> bool:
    if dl.size is not None and path.stat().st_size != dl.size:
        return False
    return dl.sha256 is None or sha256_of(path) == dl.sha256


def _download(url: str, dest: Path, dl: Download, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``dest.part``, resuming from its current size, then rename."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pose-service"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if offset and response.status != 206:  # server ignored the range: start over
            offset = 0
        total = response.headers.get("Content-Length")
        total_bytes = int(total) + offset if total is not None else dl.size
        mode = "ab" if offset else "wb"
        with open(part, mode) as out, tqdm(
            total=total_bytes, initial=offset, unit="B", unit_scale=True, desc=dl.name, disable=not progress
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total_bytes is not None and got != total_bytes:  # the connection was cut: resume next time
        raise WeightsError("download_failed", f"{url}: got {got} bytes, the server announced {total_bytes}")
    if dl.size is not None and got != dl.size:
        raise WeightsError("download_failed", f"{url}: got {got} bytes, expected {dl.size}")
    if dl.sha256 is not None:
        digest = sha256_of(part)
        if digest != dl.sha256:
            part.unlink()
            raise WeightsError("download_failed", f"{url}: sha256 {digest}, expected {dl.sha256}")
    os.replace(part, dest)


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Unpack a tar archive into ``dest``, refusing members that would land outside it.

    Absolute names, ``..`` components, links pointing out of ``dest`` and device files are
    refused before anything is written.
    """
    dest = dest.resolve()
    written: list[Path] = []
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if m.name.startswith(("/", "\\")) or not _inside(target, dest):
                    raise WeightsError("archive_unsafe", f"{archive}: member {m.name!r} would be written outside {dest}")
                if m.issym() or m.islnk():
                    link_base = target.parent if m.issym() else dest
                    link_target = (link_base / m.linkname).resolve()
                    if os.path.isabs(m.linkname) or not _inside(link_target, dest):
                        raise WeightsError("archive_unsafe", f"{archive}: link {m.name!r} -> {m.linkname!r} leaves {dest}")
                elif not (m.isfile() or m.isdir()):
                    raise WeightsError("archive_unsafe", f"{archive}: member {m.name!r} is not a regular file")
            for m in members:
                target = dest / m.name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if m.isfile():
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
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


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
