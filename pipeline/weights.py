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

Three ways keep the files obtainable and trustworthy when a host goes away or serves
something else:

* mirrors (`CacheRoots.mirrors`, ``$POSE_WEIGHTS_MIRRORS``): base URLs laid out like a
  ``--cache-dir`` folder, tried before the published addresses;
* `import_weights`: adopt the files of a cache folder or archive a user already holds;
* the lock file (`DigestLock`): size and sha256 of every file first obtained without a known
  checksum, recorded on that first verified download or import and enforced afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import importlib
import json
import logging
import os
import posixpath
import shutil
import socket
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

from .atomic import atomic_write
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

# The folder of each root inside one ``--cache-dir`` folder (`CacheRoots.under`). A mirror
# serves the same layout: ``<base>/<folder>/<path in the root>``.
ROOT_FOLDERS: dict[str, str] = {"hmr2": "4DHumans", "phalp": "phalp", "detectron2": "iopath_cache"}

MIRRORS_ENV = "POSE_WEIGHTS_MIRRORS"  # comma-separated base URLs, tried after the configured ones
LOCK_ENV = "POSE_WEIGHTS_LOCK"  # where the lock file of digests lives (upstream cache layout)
LOCK_NAME = "weights.lock.json"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheRoots:
    """Where each upstream project keeps its files, and where else they may be obtained."""

    hmr2: Path  # 4D-Humans' CACHE_DIR_4DHUMANS
    phalp: Path  # PHALP's cache (weights/, 3D/)
    detectron2: Path  # iopath's download cache, as detectron2's checkpointer uses it
    # Base URLs tried, in order, before a file's published addresses; each serves the layout of
    # a ``--cache-dir`` folder (``<base>/phalp/weights/hmar_v2_weights.pth``). $POSE_WEIGHTS_MIRRORS
    # adds more after these.
    mirrors: tuple[str, ...] = ()
    # The lock file of recorded sizes and digests (`DigestLock`); None: nothing recorded or enforced.
    lock: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "CacheRoots":
        """Defaults of the upstream projects, overridden by ``POSE_*_CACHE`` variables; the lock
        file in ``~/.cache/pose-service`` unless ``$POSE_WEIGHTS_LOCK`` names another."""
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        iopath_default = Path(env["FVCORE_CACHE"]) if env.get("FVCORE_CACHE") else home / ".torch" / "iopath_cache"
        lock = Path(env[LOCK_ENV]) if env.get(LOCK_ENV) else home / ".cache" / "pose-service" / LOCK_NAME
        return cls(
            hmr2=Path(env.get("POSE_4DHUMANS_CACHE") or home / ".cache" / "4DHumans").expanduser(),
            phalp=Path(env.get("POSE_PHALP_CACHE") or home / ".cache" / "phalp").expanduser(),
            detectron2=Path(env.get("POSE_DETECTRON2_CACHE") or iopath_default).expanduser(),
            lock=lock.expanduser(),
        )

    @classmethod
    def under(cls, base: str | os.PathLike[str]) -> "CacheRoots":
        """All three roots side by side in one folder (tiny profile, tests), the lock file beside them."""
        base = Path(base)
        return cls(
            hmr2=base / ROOT_FOLDERS["hmr2"],
            phalp=base / ROOT_FOLDERS["phalp"],
            detectron2=base / ROOT_FOLDERS["detectron2"],
            lock=base / LOCK_NAME,
        )

    def root(self, name: RootName) -> Path:
        return getattr(self, name)

    def to_dict(self) -> dict[str, str]:
        return {name: str(self.root(name)) for name in ROOT_FOLDERS}  # type: ignore[arg-type]


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

    def placements(self) -> list[tuple[RootName, str]]:
        """Every accepted (root, relative path), the official one first."""
        return [(self.root, self.path), *self.alternatives]

    def candidates(self, roots: CacheRoots) -> list[Path]:
        return [roots.root(r) / p for r, p in self.placements()]


@dataclass(frozen=True)
class FileStatus:
    file: WeightFile
    found: Path | None
    looked_in: tuple[Path, ...]

    @property
    def present(self) -> bool:
        return self.found is not None

    @property
    def lock_name(self) -> str:
        """The lock file's name for the place the file was found (the official one if absent)."""
        index = self.looked_in.index(self.found) if self.found is not None else 0
        return lock_name(*self.file.placements()[index])


def lock_name(root: RootName, path: str) -> str:
    """``<root>/<path in the root>``: the same on every machine whose caches have the official layout."""
    return f"{root}/{path}"


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
    if os.environ.get("POSE_OFFLINE", "") not in ("", "0"):
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
            for dl, exc in failures.items():
                message += f"\n- {dl.name}:\n" + _tried_lines(exc.details["tried"]) if dl in refused else f"\n- {dl.name}: {exc.message}"
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
            dl = st.file.download
            source = sources.get(dl, "") if dl is not None else ""
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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


def mirror_bases(roots: CacheRoots, environ: Mapping[str, str] | None = None) -> list[str]:
    """Mirror base URLs in the order tried: the configured ones, then ``$POSE_WEIGHTS_MIRRORS``."""
    env = os.environ if environ is None else environ
    bases: list[str] = []
    for base in (*roots.mirrors, *env.get(MIRRORS_ENV, "").split(",")):
        base = base.strip().rstrip("/")
        if base and base not in bases:
            bases.append(base)
    return bases


def mirror_url(base: str, dl: Download) -> str:
    return f"{base}/{ROOT_FOLDERS[dl.root]}/{dl.target}"


def addresses(dl: Download, roots: CacheRoots) -> list[str]:
    """Every URL ``dl`` is fetched from, in order: the mirrors, then its published addresses.

    Mirrors come first because configuring one is a choice: it is nearer, inside a network that
    cannot reach the published hosts (each of which would cost a timeout first), or alive when
    they are not. Whichever address answers, the bytes are held to the same checks (announced
    length, published checksum, lock file entry).
    """
    urls = [mirror_url(base, dl) for base in mirror_bases(roots)]
    return urls + [u for u in dl.urls if u not in urls]


def fetch(dl: Download, roots: CacheRoots, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``dl`` (trying each address in turn), verify it, and unpack it if it is an archive."""
    _fetch(dl, roots, progress=progress, timeout=timeout)
    return roots.root(dl.root) / dl.target


def _fetch(dl: Download, roots: CacheRoots, *, progress: bool, timeout: float) -> str:
    """`fetch`, answering where the bytes came from."""
    dest = roots.root(dl.root) / dl.target
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + ".lock")):
        return _fetch_locked(dl, roots, dest, progress=progress, timeout=timeout)


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


# What one address may answer instead of the file; each is reported, and the next address tried.
_ADDRESS_ERRORS = (OSError, ValueError, http.client.HTTPException, WeightsError)


def _fetch_locked(dl: Download, roots: CacheRoots, dest: Path, *, progress: bool, timeout: float) -> str:
    lock = DigestLock(roots.lock)
    name = lock_name(dl.root, dl.target)
    locked = lock.get(name)
    size = dl.size if dl.size is not None else (locked.size if locked else None)
    digest = dl.sha256 or (locked.sha256 if locked else None)
    if dest.is_file() and _matches(dest, size, digest):
        source = f"{dest} (downloaded before)"
    else:
        tried: list[dict[str, str]] = []
        for url in addresses(dl, roots):
            try:
                _download(url, dest, dl.name, size=size, sha256=digest, progress=progress, timeout=timeout)
                source = url
                break
            except _ADDRESS_ERRORS as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()
                answer = _answer(exc)
                logger.warning("download of %s from %s failed: %s", dl.name, url, answer)
                tried.append({"url": url, "answer": answer})
        else:
            raise WeightsError(
                "download_failed",
                f"could not download {dl.name}; every address failed:\n{_tried_lines(tried)}\n{_ways_out([(dl, dest)])}",
                details={"file": dl.name, "path": str(dest), "tried": tried},
            )
    if dl.extract:
        # The archive itself is recorded (the files it holds are, by `ensure`, once checked):
        # a later download of it, from whichever address, must bring the same bytes.
        if dl.sha256 is None and locked is None:
            lock.record(name, dest, key=dl.name, source=source)
        safe_extract(dest, roots.root(dl.root))
    return source


def _matches(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path) == sha256


def _answer(exc: BaseException) -> str:
    """What an address answered, in a few words."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(reason, socket.gaierror):
            return f"host not found ({reason.strerror})"
        return str(reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"cut short: {len(exc.partial)} bytes read, {exc.expected} more expected"
    if isinstance(exc, WeightsError):
        return exc.message
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _tried_lines(tried: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(f"    {t['url']}: {t['answer']}" for t in tried)


def _ways_out(items: Sequence[tuple[Download, Path]]) -> str:
    """The three ways to provide files no address served."""
    served = ", ".join(mirror_url("https://HOST/BASE", dl) for dl, _ in items)
    return "\n".join(
        [
            "ways out:",
            f"  - a mirror laid out like a --cache-dir folder: set {MIRRORS_ENV}=https://HOST/BASE (comma separated; "
            f"or weights_mirrors in the application args) where it serves {served}",
            "  - a copy you already hold: `python -m pipeline weights import PATH` (a 4D-Humans, PHALP or detectron2 "
            "cache folder, another machine's --cache-dir, or a .tar.gz/.zip of one)",
            "  - by hand: put " + ", ".join(str(dest) for _, dest in items) + " in place (an archive is unpacked on the next start)",
        ]
    )


def _download(
    url: str,
    dest: Path,
    name: str,
    *,
    size: int | None,
    sha256: str | None,
    progress: bool,
    timeout: float,
    resume: bool = True,
) -> None:
    """Stream ``url`` into ``dest.part``, resuming from its current size, then rename.

    Renamed only when complete: as long as the length the server announced (or ``size``) and
    matching ``sha256`` when given. A transfer cut short keeps its part file for the next try.
    """
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if resume and part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pose-service"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if offset and exc.code == 416:  # the part is no prefix of what the server has: start over
            exc.close()
            part.unlink(missing_ok=True)
            _download(url, dest, name, size=size, sha256=sha256, progress=progress, timeout=timeout, resume=False)
            return
        raise
    with response:
        announced: int | None = None
        if offset and getattr(response, "status", None) == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:  # another range than asked for: start over rather than splice
                response.close()
                part.unlink(missing_ok=True)
                _download(url, dest, name, size=size, sha256=sha256, progress=progress, timeout=timeout, resume=False)
                return
            announced = total
        elif offset:  # the server ignored the range: the body is the whole file
            offset = 0
        length = response.headers.get("Content-Length")
        if announced is None and length is not None:
            announced = offset + int(length)
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=announced if announced is not None else size,
            initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress,
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if announced is not None and got < announced:  # the connection was cut: resume next time
        raise WeightsError("download_failed", f"cut short: got {got} of the {announced} bytes announced")
    expected = size if size is not None else announced
    if expected is not None and got != expected:
        part.unlink()
        raise WeightsError("download_failed", f"got {got} bytes, expected {expected}")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256:
            part.unlink()
            raise WeightsError("download_failed", f"sha256 {digest}, expected {sha256}")
    os.replace(part, dest)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range: bytes a-b/total`` header."""
    if not header or not header.startswith("bytes "):
        return None, None
    span, _, total = header[len("bytes ") :].partition("/")
    start = span.split("-", 1)[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


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


# ---------------------------------------------------------------------------------------------
# Adopting files a user already holds
# ---------------------------------------------------------------------------------------------

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
                ((r, rel, n) for r, rel in file.placements() if (n := _find(by_basename, rel)) is not None), None
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
