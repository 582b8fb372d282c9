"""Resumable downloads: mirrors tried before the published addresses, one process at a time per
file, every answer checked against the announced length, checksum and lock file entry.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import WeightsError
from .archive import safe_extract
from .cache import MIRRORS_ENV, ROOT_FOLDERS, CacheRoots
from .digest import _CHUNK, _matches, sha256_of
from .flock import _file_lock
from .lockfile import DigestLock, lock_name
from .spec import Download

logger = logging.getLogger(__name__)


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
